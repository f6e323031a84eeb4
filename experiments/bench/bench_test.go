package bench

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/dtypes"

	"blackmamba/bm"
	"blackmamba/xla"
	"blackmamba/xla/kerneltrace"
)

// TestBenchmarksRun runs each benchmark at a tiny size on the pure-Go backend and checks that
// every row was measured (no error, positive times, the derived columns filled) and that the
// table lists them; the speeds themselves are not asserted.
func TestBenchmarksRun(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := bm.MustPreset("tiny")
	cfg.Vocab, cfg.VocabReal = 97, 90
	var rows []Row
	scan, err := Scan(backend, bm.ScanShape{B: 1, T: 20, D: 8, N: 4}, []bm.ScanOptions{{}}, 2, true)
	if err != nil {
		t.Fatal(err)
	}
	rows = append(rows, scan...)
	moe := MoE(backend, cfg, 8, 64, 2)
	rows = append(rows, moe...)
	step := TrainStep(backend, cfg, 2, 8, 2)
	rows = append(rows, step)
	if len(scan) != 2 || len(moe) != 14 { // 7 variants (2 of them larger dispatch blocks), fwd and fwd+bwd
		t.Fatalf("got %d scan rows and %d MoE rows, want 2 and 14", len(scan), len(moe))
	}
	for _, r := range rows {
		if r.Err != "" || !(r.Ms > 0) || !(r.MinMs > 0) || r.MinMs > r.Ms {
			t.Errorf("%s %s: error %q, median %.3g ms, min %.3g ms", r.Bench, r.Variant, r.Err, r.Ms, r.MinMs)
		}
	}
	for _, r := range moe[2:] { // the MoE rows carry their ratio to the dense block
		if !(r.Extra["x_dense"] > 0) {
			t.Errorf("%s %s: no ratio to the dense block", r.Bench, r.Variant)
		}
	}
	if !(step.TokensPerS > 0) || !(step.MFU > 0) || !(step.FLOPs > 0) || step.Extra["params_total"] <= 0 {
		t.Errorf("train-step row %+v lacks throughput, MFU or parameter counts", step)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"scan-fwd+bwd", "MoE sinkhorn", "train-step"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
}

// TestBreakdownAndGraphSize runs the per-block breakdown of a tiny BlackMamba and checks that
// every piece was measured, that the step-share column covers exactly the model's blocks, and
// that the graph-size rows count the operations (more for Sinkhorn routing than for argmax,
// whose graph lacks the unrolled rounds).
func TestBreakdownAndGraphSize(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := bm.MustPreset("tiny")
	cfg.Vocab, cfg.VocabReal = 97, 90
	rows := Breakdown(backend, cfg, 2, 8, 1)
	counted := 0
	for _, r := range rows {
		if r.Err != "" || !(r.Ms > 0) {
			t.Errorf("%s %s: error %q, median %.3g ms", r.Bench, r.Variant, r.Err, r.Ms)
		}
		if r.Bench == "breakdown-fwd+bwd" {
			counted += int(r.Extra["count"])
		}
	}
	if want := len(cfg.Blocks()) + 1; counted != want {
		t.Errorf("the fwd+bwd rows count %d pieces of the step, want %d blocks + the head", counted, want)
	}
	sk := GraphSize(backend, cfg, 2, 8)
	am := cfg
	am.Routing = bm.RoutingArgmax
	ag := GraphSize(backend, am, 2, 8)
	for _, r := range []Row{sk, ag} {
		if r.Err != "" || !(r.Extra["nodes_total"] > r.Extra["nodes_forward"]) || !(r.Extra["nodes_forward"] > 0) {
			t.Errorf("graph row %+v: want forward > 0 nodes and more with the gradients", r)
		}
	}
	if !(sk.Extra["nodes_forward"] > ag.Extra["nodes_forward"]) {
		t.Errorf("Sinkhorn routing graph has %v forward nodes, argmax %v: want more with Sinkhorn", sk.Extra["nodes_forward"], ag.Extra["nodes_forward"])
	}
}

// TestDecodeRuns times greedy decoding of a tiny BlackMamba (float32 and bfloat16 weights) on
// the pure-Go backend and checks that the row was measured: positive time per token and
// tokens/s equal to 1000 / ms, the weight bandwidth derived from the active parameters at the
// dtype's size, greedy passes that repeat their tokens, and the row passed to OnRow.
func TestDecodeRuns(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	var emitted []Row
	OnRow = func(r Row) { emitted = append(emitted, r) }
	defer func() { OnRow = nil }()
	for _, c := range []struct {
		dtype string
		bytes float64
	}{{"float32", 4}, {"bfloat16", 2}} {
		cfg := bm.MustPreset("tiny")
		cfg.Vocab, cfg.VocabReal = 97, 90
		cfg.ComputeDType = c.dtype
		_, active := cfg.ParamCounts()
		r := Decode(backend, cfg, 6, 1, 2)
		if r.Err != "" || !(r.Ms > 0) || !(r.MinMs > 0) || r.MinMs > r.Ms || r.Reps != 2 || !(r.CompileS > 0) {
			t.Fatalf("%s: row %+v: want no error, 0 < min <= median, 2 reps and a compile time", c.dtype, r)
		}
		if math.Abs(r.TokensPerS*r.Ms-1000) > 1e-9*1000 {
			t.Errorf("%s: %.6g tokens/s at %.6g ms per token, want 1000/ms", c.dtype, r.TokensPerS, r.Ms)
		}
		wantBytes := float64(active) * c.bytes
		if r.Extra["weight_bytes"] != wantBytes || r.Extra["params_active"] != float64(active) {
			t.Errorf("%s: weight_bytes %v and params_active %v, want %v and %d", c.dtype, r.Extra["weight_bytes"], r.Extra["params_active"], wantBytes, active)
		}
		if gbs := wantBytes / r.Ms * 1e3 / 1e9; math.Abs(r.Extra["weight_gb_per_s"]-gbs) > 1e-9*gbs {
			t.Errorf("%s: weight_gb_per_s %v, want %v", c.dtype, r.Extra["weight_gb_per_s"], gbs)
		}
		if !(r.Extra["first_token_ms"] > 0) || r.Extra["tokens_repeat"] != 1 || !(r.Extra["bw_util"] > 0) {
			t.Errorf("%s: extras %v: want a first-token time, repeated tokens and a bandwidth share", c.dtype, r.Extra)
		}
	}
	if len(emitted) != 2 || emitted[1].Bench != "decode" {
		t.Errorf("OnRow got %d rows, want the 2 decode rows", len(emitted))
	}
	// Unrolled: 4 steps per call after an aligning call of 3; the same greedy tokens every
	// pass, and the unroll named in the row.
	cfg := bm.MustPreset("tiny")
	cfg.Vocab, cfg.VocabReal = 97, 90
	if r := Decode(backend, cfg, 12, 4, 2); r.Err != "" || !(r.Ms > 0) || r.Extra["unroll"] != 4 || r.Extra["tokens_repeat"] != 1 || !strings.Contains(r.Variant, "unroll 4") {
		t.Errorf("unroll 4: row %+v: want a time, unroll 4 in the variant and extras, repeated tokens", r)
	}
	// Two sequences together: tokens/s counts both, every pass the same tokens of both rows.
	if r := DecodeBatch(backend, cfg, 2, 8, 4, 2); r.Err != "" || r.Extra["batch"] != 2 || r.Extra["tokens_repeat"] != 1 ||
		math.Abs(r.TokensPerS*r.Ms-2000) > 1e-9*2000 || !strings.Contains(r.Shape, "batch 2") {
		t.Errorf("batch 2: row %+v: want batch 2 in the shape and extras, 2000/ms tokens/s, repeated tokens", r)
	}
	// Step products padded to 2 rows: named in the variant and extras.
	padded := cfg
	padded.StepRows = 2
	if r := Decode(backend, padded, 8, 4, 2); r.Err != "" || r.Extra["step_rows"] != 2 || r.Extra["tokens_repeat"] != 1 || !strings.Contains(r.Variant, "step rows 2") {
		t.Errorf("step rows 2: row %+v: want step rows 2 in the variant and extras, repeated tokens", r)
	}
	// The steps reading transposed weight copies: named in the variant and extras.
	for _, layout := range []bm.StepLayout{bm.StepTransposed, bm.StepFolded} {
		r := DecodeVariant(backend, cfg, 1, 8, 4, 2, layout)
		if r.Err != "" || r.Extra["transposed"] != 1 || r.Extra["folded"] != b2f(layout == bm.StepFolded) || r.Extra["tokens_repeat"] != 1 || !strings.Contains(r.Variant, string(layout)) {
			t.Errorf("decode %s: %+v", layout, r)
		}
	}
	// The resident loop, two sequences, unrolled: named in the variant and extras, the same
	// tokens every pass.
	if r := DecodeWith(backend, cfg, 2, 12, 4, 2, bm.StepFolded, LoopResident); r.Err != "" || r.Extra["resident"] != 1 || r.Extra["sync_calls"] != 0 || r.Extra["tokens_repeat"] != 1 || !strings.Contains(r.Variant, "resident") || strings.Contains(r.Variant, "sync") {
		t.Errorf("decode resident: %+v", r)
	} else if _, ok := r.Extra["pipelined_calls"]; !ok {
		t.Errorf("decode resident: no pipelined_calls in %v", r.Extra)
	}
	if r := DecodeWith(backend, cfg, 1, 8, 2, 1, bm.StepFolded, LoopResidentSync); r.Err != "" || r.Extra["sync_calls"] != 1 || r.Extra["pipelined_calls"] != 0 || !strings.Contains(r.Variant, "resident, sync calls") {
		t.Errorf("decode resident, sync calls: %+v", r)
	}
	// A row that differs from the previous one only in its loop and step fusions reads the same
	// weights (decodeCache); another dtype makes new ones.
	fused := cfg
	fused.StepFuse = "residual,router,ring"
	if r := DecodeWith(backend, fused, 1, 8, 1, 1, bm.StepFolded, LoopResident); r.Err != "" || r.Extra["weights_reused"] != 1 || r.Extra["tokens_repeat"] != 1 {
		t.Errorf("decode with the previous row's weights: %+v", r)
	}
	other := cfg
	other.ComputeDType = "bfloat16"
	if r := DecodeWith(backend, other, 1, 8, 1, 1, bm.StepFolded, LoopResident); r.Err != "" || r.Extra["weights_reused"] != 0 {
		t.Errorf("decode in another dtype: %+v", r)
	}
	if _, err := ParseLoop("ahead"); err == nil || !strings.Contains(err.Error(), `"ahead"`) {
		t.Errorf("ParseLoop(ahead): error %v, want one naming it", err)
	}
	if r := DecodeBatch(backend, cfg, 0, 8, 1, 1); !strings.Contains(r.Err, "batch (0)") {
		t.Errorf("batch 0: error %q, want one naming the batch", r.Err)
	}
	if r := Decode(backend, bm.MustPreset("tiny"), 8, 0, 1); !strings.Contains(r.Err, "unroll (0)") {
		t.Errorf("unroll 0: error %q, want one naming the unroll", r.Err)
	}
	if r := Decode(backend, bm.MustPreset("tiny"), 1, 1, 1); !strings.Contains(r.Err, "tokens (1) must be >= 2") {
		t.Errorf("1 token: error %q, want one naming the token count", r.Err)
	}
}

// TestRouter checks the router rows: all measured, Sinkhorn rows report at least one round,
// and on the skewed logits both Sinkhorns spread the tokens more evenly than argmax.
func TestRouter(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := bm.MustPreset("tiny")
	rows := Router(backend, cfg, 8, 512, 1)
	if len(rows) != 3 {
		t.Fatalf("got %d router rows, want 3", len(rows))
	}
	for _, r := range rows {
		if r.Err != "" || !(r.Ms > 0) {
			t.Errorf("%s: error %q, median %.3g ms", r.Variant, r.Err, r.Ms)
		}
	}
	argmax := rows[0].Extra["max_share"]
	for _, r := range rows[1:] {
		if r.Extra["rounds"] < 1 || !(r.Extra["max_share"] < argmax) {
			t.Errorf("%s: %v rounds, largest share %.3f (argmax %.3f): want >= 1 round and a smaller share",
				r.Variant, r.Extra["rounds"], r.Extra["max_share"], argmax)
		}
	}
}

// TestKernels checks the kernels benchmark's chains against the float64 host computation of
// the same products (ChainReference): to 1e-4 relative in float32 (odd and even chain lengths,
// square and rectangular matrices, stacked and one argument per matrix, one row and several), to 10% with bfloat16 products (each rounds its operands to 8
// bits and the chain amplifies that; a wrong weight is off by far more), and that a bad shape is
// an error row naming it.
func TestKernels(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	chains := []Chain{{5, 5, 1, false, 0}, {8, 12, 3, false, 0}, {12, 8, 4, false, 0}, {8, 12, 3, true, 0}, {8, 12, 3, false, 2}, {12, 8, 4, true, 3}}
	for _, tc := range []struct {
		dtype dtypes.DType
		tol   float64
	}{{dtypes.Float32, 1e-4}, {dtypes.BFloat16, 0.1}} {
		rows := Kernels(backend, chains, tc.dtype, 2)
		if len(rows) != len(chains) {
			t.Fatalf("%s: got %d rows, want %d", tc.dtype, len(rows), len(chains))
		}
		for i, r := range rows {
			c := chains[i]
			if r.Err != "" || !(r.Ms > 0) {
				t.Errorf("%s %v: error %q, median %.3g ms", tc.dtype, c, r.Err, r.Ms)
				continue
			}
			want := ChainReference(c)
			if got := r.Extra["result"]; math.Abs(got-want) > tc.tol*max(math.Abs(want), 0.01) {
				t.Errorf("%s %v: chain result %.6g, float64 reference %.6g (tolerance %g)", tc.dtype, c, got, want, tc.tol)
			}
			if wantArgs := map[bool]float64{false: 3, true: float64(c.K + 1)}[c.Split]; r.Extra["arguments"] != wantArgs {
				t.Errorf("%s %v: %g arguments, want %g", tc.dtype, c, r.Extra["arguments"], wantArgs)
			}
			if wantBytes := float64(c.K * c.In * c.Out * tc.dtype.Size()); r.Extra["weight_bytes"] != wantBytes {
				t.Errorf("%s %v: weight_bytes %g, want %g", tc.dtype, c, r.Extra["weight_bytes"], wantBytes)
			}
		}
	}
	bad := Kernels(backend, []Chain{{4, 4, 0, false, 0}}, dtypes.Float32, 1)
	if len(bad) != 1 || !strings.Contains(bad[0].Err, "products (0)") {
		t.Errorf("chain of 0 products: rows %+v, want an error naming the products", bad)
	}
}

// TestTraceRowFrom: a traced region's kernels become per-call figures of the row and reach
// OnTrace; a failure to read them becomes the row's error.
func TestTraceRowFrom(t *testing.T) {
	ks := []kerneltrace.Kernel{
		{Name: "a", StartNs: 1000, EndNs: 3000, Grid: [3]int32{1, 1, 1}, Block: [3]int32{32, 1, 1}},
		{Name: "b", StartNs: 4000, EndNs: 5000, Grid: [3]int32{1, 1, 1}, Block: [3]int32{32, 1, 1}},
		{Name: "a", StartNs: 6000, EndNs: 8000, Grid: [3]int32{1, 1, 1}, Block: [3]int32{32, 1, 1}},
		{Name: "c", StartNs: 20000, EndNs: 21000, Grid: [3]int32{1, 1, 1}, Block: [3]int32{32, 1, 1}}, // outside
	}
	var got []kerneltrace.Summary
	OnTrace = func(_ Row, s kerneltrace.Summary) { got = append(got, s) }
	defer func() { OnTrace = nil }()
	row := Row{Bench: "x", Variant: "v"}
	traceRowFrom(&row, ks, nil, region{from: 1000, to: 11000, calls: 2})
	want := map[string]float64{"trace_kernels": 1.5, "trace_busy_ms": 0.0025, "trace_idle_ms": 0.0025, "trace_sum_ms": 0.0025, "trace_gap_us": 1}
	for k, w := range want {
		if math.Abs(row.Extra[k]-w) > 1e-12 {
			t.Errorf("%s = %v, want %v", k, row.Extra[k], w)
		}
	}
	if len(got) != 1 || got[0].Kernels != 3 || got[0].Stats[0].Name != "a" {
		t.Errorf("OnTrace got %+v", got)
	}
	bad := Row{Bench: "x"}
	traceRowFrom(&bad, nil, errors.New("no records"), region{from: 0, to: 1, calls: 1})
	if !strings.Contains(bad.Err, "kernel trace: no records") {
		t.Errorf("error row: %q", bad.Err)
	}
}
