// Package bench measures the speed of the model's hot paths on a backend: the selective scan,
// the MoE block against a dense block of the same active size, and a full training step. Each
// benchmark returns rows of one table (variant, shape, time, tokens/s, MFU) that the
// `blackmamba bench` command prints and writes as JSON.
package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/xla/kerneltrace"
)

// PeakBF16FLOPs is the bf16 dense matrix rate measured on an H200 (FLOP/s), the reference of
// the model FLOPs utilisation (MFU) column.
const PeakBF16FLOPs = 790e12

// Row is one measured variant.
type Row struct {
	Bench   string `json:"bench"`   // "scan", "moe", "train-step", …
	Variant string `json:"variant"` // what was run
	Shape   string `json:"shape"`   // problem size
	// Ms is the median time of one call in milliseconds after warm-up; MinMs the fastest.
	Ms    float64 `json:"ms"`
	MinMs float64 `json:"min_ms"`
	// Reps is the number of timed calls.
	Reps int `json:"reps"`
	// CompileS is the time of the first call (graph building, compilation and one run).
	CompileS float64 `json:"compile_s"`
	// TokensPerS is tokens processed per second at the median time (0 when not meaningful).
	TokensPerS float64 `json:"tokens_per_s,omitempty"`
	// FLOPs is the model FLOPs of one call; MFU = FLOPs / (Ms · PeakBF16FLOPs).
	FLOPs float64 `json:"flops,omitempty"`
	MFU   float64 `json:"mfu,omitempty"`
	// PeakBytes is the device memory high-water mark if known, else -1.
	PeakBytes int64 `json:"peak_bytes"`
	// Extra holds benchmark-specific figures (floors, ratios, errors against references).
	Extra map[string]float64 `json:"extra,omitempty"`
	Err   string             `json:"error,omitempty"`
}

// OnRow, when set, is called with each row of MoE and Breakdown as soon as it is measured, so
// that a caller can print and save partial results of a run that a time limit may stop.
var OnRow func(Row)

// emit adds the kernels of the row's timed region to it (traceRow) and passes it to OnRow.
func emit(r *Row) {
	traceRow(r)
	if OnRow != nil {
		OnRow(*r)
	}
}

// Trace, when set, records the device kernels of each row's timed region: the timed calls of
// the scan, train-step, moe, router, breakdown and kernels benchmarks, and the steps of the
// last timed pass of decode. Such a row gets Extra figures per call (per step for decode): trace_kernels
// (kernels run), trace_busy_ms (time with a kernel running), trace_idle_ms (the rest of the
// region: the device waiting for work), trace_sum_ms (the kernels' durations added up) and
// trace_gap_us (the median time between one kernel's end and the next one's start); OnTrace
// gets the region's summary, kernel by kernel.
var Trace *kerneltrace.Tracer

// OnTrace, when set with Trace, receives each traced row and its region's summary.
var OnTrace func(Row, kerneltrace.Summary)

// region is a timed region on the tracer's clock and the calls (or steps) it holds.
type region struct {
	from, to uint64
	calls    int
}

// lastRegion is the most recent timed region not yet summarised into a row (calls 0: none).
var lastRegion region

// traceNow returns the tracer's time (0 without a trace).
func traceNow() uint64 {
	if Trace == nil {
		return 0
	}
	t, _ := Trace.Now()
	return t
}

// regionEnd closes the region opened at from, holding calls calls or steps.
func regionEnd(from uint64, calls int) {
	if Trace == nil {
		return
	}
	lastRegion = region{from: from, to: traceNow(), calls: calls}
}

// traceRow summarises the kernels of the last timed region into row (see Trace); a failure to
// read them is noted in the row's error without replacing one it has.
func traceRow(row *Row) {
	reg := lastRegion
	lastRegion = region{}
	if Trace == nil || reg.calls == 0 {
		return
	}
	ks, err := Trace.Collect()
	if err == nil {
		err = kerneltrace.Check(ks)
	}
	traceRowFrom(row, ks, err, reg)
}

// traceRowFrom is traceRow on kernels already collected (err: the failure to collect them).
func traceRowFrom(row *Row, ks []kerneltrace.Kernel, err error, reg region) {
	if err != nil {
		if row.Err == "" {
			row.Err = "kernel trace: " + err.Error()
		}
		return
	}
	s := kerneltrace.Summarize(row.Bench+" "+row.Variant+" "+row.Shape, ks, reg.from, reg.to)
	if row.Extra == nil {
		row.Extra = map[string]float64{}
	}
	n := float64(reg.calls)
	row.Extra["trace_kernels"] = float64(s.Kernels) / n
	row.Extra["trace_busy_ms"] = s.BusyUs / 1e3 / n
	row.Extra["trace_idle_ms"] = s.IdleUs / 1e3 / n
	row.Extra["trace_sum_ms"] = s.SumUs / 1e3 / n
	row.Extra["trace_gap_us"] = s.GapMedianUs
	if OnTrace != nil {
		OnTrace(*row, s)
	}
}

// Report is what `blackmamba bench` writes.
type Report struct {
	Date     string `json:"date"`
	Hardware string `json:"hardware"`
	Backend  string `json:"backend"`
	Rows     []Row  `json:"rows"`
}

// timeCalls runs call once (compile + first run), then warm more times, then reps timed times,
// and returns the first call's time in seconds, and the median and minimum of the timed calls
// in milliseconds. call must block until the device work is done (fetch a result).
func timeCalls(call func() error, warm, reps int) (compileS, medianMs, minMs float64, err error) {
	start := time.Now()
	if err = call(); err != nil {
		return
	}
	compileS = time.Since(start).Seconds()
	for range warm {
		if err = call(); err != nil {
			return
		}
	}
	times := make([]float64, 0, reps)
	from := traceNow()
	defer func() {
		if err == nil {
			regionEnd(from, reps)
		}
	}()
	for range reps {
		t0 := time.Now()
		if err = call(); err != nil {
			return
		}
		times = append(times, float64(time.Since(t0).Microseconds())/1000)
	}
	slices.Sort(times)
	return compileS, times[len(times)/2], times[0], nil
}

// withGradients returns loss plus the sums of squares of its gradients with respect to wrt and
// to every trainable variable of ctx that the graph uses: one scalar that needs the whole
// backward pass, so that timing it times forward and backward.
func withGradients(ctx *context.Context, loss *Node, wrt ...*Node) *Node {
	g := loss.Graph()
	for v := range ctx.IterVariables() {
		if v.Trainable && v.InUseByGraph(g) {
			wrt = append(wrt, v.ValueGraph(g))
		}
	}
	sum := loss
	for _, gr := range Gradient(loss, wrt...) {
		sum = Add(sum, ReduceAllSum(Square(ConvertDType(gr, dtypes.Float32))))
	}
	return sum
}

// timeExec times e on args (see timeCalls); its first output must be a float32 scalar, which
// is fetched to wait for the device.
func timeExec(e *context.Exec, args []any, warm, reps int) (compileS, medianMs, minMs float64, err error) {
	return timeCalls(func() error {
		outs, err := e.Exec(args...)
		if err != nil {
			return err
		}
		_ = tensors.ToScalar[float32](outs[0])
		finalize(outs)
		return nil
	}, warm, reps)
}

// finalize frees device buffers of outputs that are not needed any more.
func finalize(ts []*tensors.Tensor) {
	for _, t := range ts {
		if t != nil {
			t.FinalizeAll()
		}
	}
}

// catch turns a panic of graph building (GoMLX reports errors by panicking) into an error.
func catch(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return fn()
}

// WriteTable prints rows as an aligned table.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "bench\tvariant\tshape\tmedian ms\tmin ms\ttokens/s\tMFU\tpeak mem\tnotes")
	for _, r := range rows {
		if r.Err != "" {
			msg := r.Err
			if len(msg) > 120 {
				msg = msg[:120] + "…"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t-\tERROR: %s\n", r.Bench, r.Variant, r.Shape, strings.ReplaceAll(msg, "\n", " "))
			continue
		}
		tps, mfu, mem := "-", "-", "-"
		if r.TokensPerS > 0 {
			tps = fmt.Sprintf("%.0f", r.TokensPerS)
		}
		if r.MFU > 0 {
			mfu = fmt.Sprintf("%.1f%%", 100*r.MFU)
		}
		if r.PeakBytes > 0 {
			mem = fmt.Sprintf("%.1f GiB", float64(r.PeakBytes)/(1<<30))
		}
		var notes []string
		keys := make([]string, 0, len(r.Extra))
		for k := range r.Extra {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			notes = append(notes, fmt.Sprintf("%s=%s", k, short(r.Extra[k])))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.3f\t%.3f\t%s\t%s\t%s\t%s\n", r.Bench, r.Variant, r.Shape, r.Ms, r.MinMs, tps, mfu, mem, strings.Join(notes, " "))
	}
	return tw.Flush()
}

func short(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1e6 || a < 1e-3:
		return fmt.Sprintf("%.3g", v)
	default:
		return fmt.Sprintf("%.4g", v)
	}
}

// backendName describes a backend for the report.
func backendName(b backends.Backend) string { return b.Name() + " (" + b.Description() + ")" }
