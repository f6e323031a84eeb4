package bm

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// ScanShape is the problem size of a selective scan: x [B, T, D], A [D, N].
type ScanShape struct{ B, T, D, N int }

func (s ScanShape) String() string { return fmt.Sprintf("B=%d T=%d D=%d N=%d", s.B, s.T, s.D, s.N) }

// ForwardFloorBytes is the memory traffic a forward pass cannot avoid in float32: reading x, Δ,
// A, B, C once and writing y and hT once.
func (s ScanShape) ForwardFloorBytes() int64 {
	in := 2*s.B*s.T*s.D + s.D*s.N + 2*s.B*s.T*s.N
	out := s.B*s.T*s.D + s.B*s.D*s.N
	return 4 * int64(in+out)
}

// ForwardBackwardFloorBytes adds to the forward floor the backward's unavoidable traffic:
// reading the output cotangents (shaped like y and hT) and writing the five input gradients.
func (s ScanShape) ForwardBackwardFloorBytes() int64 {
	in := 2*s.B*s.T*s.D + s.D*s.N + 2*s.B*s.T*s.N
	out := s.B*s.T*s.D + s.B*s.D*s.N
	return s.ForwardFloorBytes() + 4*int64(out+in)
}

// StateBytes is the size of one full [B, T, D, N] float32 state tensor, the tensor a good scan
// never materialises.
func (s ScanShape) StateBytes() int64 { return 4 * int64(s.B) * int64(s.T) * int64(s.D) * int64(s.N) }

// ScanBenchResult is the timing of one scan variant.
type ScanBenchResult struct {
	Variant string      // ScanOptions.String()
	Options ScanOptions //
	Shape   ScanShape   //
	// Median wall times of a forward pass (y and hT) and of a forward+backward pass (the five
	// input gradients of Σ wy⊙y + Σ wh⊙hT), in milliseconds, synchronised by fetching a scalar.
	ForwardMs, ForwardBackwardMs float64
	// Fastest repetitions, in milliseconds.
	ForwardMinMs, ForwardBackwardMinMs float64
	// Time of the first call of each (graph building, compilation and one run), in seconds.
	ForwardCompileS, ForwardBackwardCompileS float64
	// Bytes that must move at least (see ScanShape.ForwardFloorBytes), and the implied bandwidth
	// of the median time in GB/s.
	ForwardFloorBytes, ForwardBackwardFloorBytes int64
	ForwardGBs, ForwardBackwardGBs               float64
	// PeakBytes is the device memory high-water mark, or -1: GoMLX v0.26.0 does not expose
	// PJRT's device memory statistics (run with XLA_FLAGS=--xla_dump_to=DIR and read the
	// "buffer-assignment" files for XLA's temporary allocation).
	PeakBytes int64
	// Err is set when the variant failed to build, compile or run (e.g. out of memory).
	Err string
}

// ScanBenchVariants is the set of variants worth comparing on a GPU (20, so that a run of all
// of them stays short): the default (L = 8, fused backward, LinkCached), L = 4, the fused
// backward with the concatenating link (LinkConcat, the default before LinkCached),
// automatic differentiation of the chunked forward, chunk lengths 32 and 64 and the log-depth
// across-chunk scan, then the backward variants (BackwardFused, BackwardTwoChain,
// BackwardStacked, a longer backward chunk) with either link, mostly at L = 16 (the default
// chunk until 2026-11-29): the 14 variants timed before LinkCached became the default, the
// log-depth across-chunk scan with LinkCached (with the fused and the two-chain backward), and
// the output recomputed from the entering states with the fused and the two-chain backward.
func ScanBenchVariants() []ScanOptions {
	f, tc := BackwardFused, BackwardTwoChain
	return []ScanOptions{
		{},
		{Chunk: 4},
		{Chunk: 16, Backward: f, Link: LinkConcat},
		{Chunk: 16, Autodiff: true},
		{Chunk: 32, Backward: f, Link: LinkConcat},
		{Chunk: 64, Backward: f, Link: LinkConcat},
		{Chunk: 16, Across: AcrossLogDepth, Backward: f, Link: LinkConcat},
		{Chunk: 16, Backward: f, Link: LinkCached},
		{Chunk: 16, Across: AcrossLogDepth, Backward: f, Link: LinkCached},
		{Chunk: 16, Across: AcrossLogDepth, Backward: tc, Link: LinkCached},
		{Chunk: 16, Backward: tc, Link: LinkConcat},
		{Chunk: 16, Backward: tc, Link: LinkCached},
		{Chunk: 16, Backward: tc, BackwardChunk: 32, Link: LinkCached},
		{Chunk: 16, Backward: BackwardStacked, Link: LinkConcat},
		{Chunk: 16, Backward: BackwardStacked, Link: LinkCached},
		{Chunk: 16, Backward: BackwardStacked, BackwardChunk: 32, Link: LinkCached},
		{Chunk: 8, Backward: BackwardStacked, Link: LinkCached},
		{Chunk: 32, Backward: BackwardStacked, Link: LinkCached},
		{Chunk: 16, Output: OutputRecompute, Backward: f, Link: LinkCached},
		{Chunk: 16, Output: OutputRecompute, Backward: tc, Link: LinkCached},
	}
}

// randomScanInputsExec returns an executor that draws scan inputs on the device with the
// magnitudes of a trained Mamba layer (see newScanInputs in the tests), plus the cotangents wy
// [B, T, D] and wh [B, D, N].
func randomScanInputsExec(backend backends.Backend, s ScanShape, seed int64) *Exec {
	return MustNewExec(backend, func(g *Graph) []*Node {
		rng := RNGStateFromSeedForGraph(g, seed)
		normal := func(dims ...int) *Node {
			var v *Node
			rng, v = RandomNormal(rng, shapes.Make(dtypes.Float32, dims...))
			return v
		}
		x := normal(s.B, s.T, s.D)
		dt := ClipScalar(Softplus(AddScalar(normal(s.B, s.T, s.D), -2)), 0.001, 0.5)
		nIdx := AddScalar(Iota(g, shapes.Make(dtypes.Float32, s.D, s.N), 1), 1)
		A := Neg(Mul(nIdx, Exp(MulScalar(normal(s.D, s.N), 0.1))))
		return []*Node{x, dt, A, normal(s.B, s.T, s.N), normal(s.B, s.T, s.N), normal(s.B, s.T, s.D), normal(s.B, s.D, s.N)}
	})
}

// BenchScan times each variant on backend at the given shape: forward and forward+backward,
// the median of reps runs after two warm-up runs. Inputs are random and stay on the device.
// A variant that fails is reported with Err set; the others still run.
func BenchScan(backend backends.Backend, shape ScanShape, variants []ScanOptions, reps int) []ScanBenchResult {
	reps = max(reps, 1)
	inputs := randomScanInputsExec(backend, shape, 42).MustExec()
	defer func() {
		for _, t := range inputs {
			t.FinalizeAll()
		}
	}()
	results := make([]ScanBenchResult, 0, len(variants))
	for _, opts := range variants {
		r := ScanBenchResult{Variant: opts.String(), Options: opts, Shape: shape, PeakBytes: -1,
			ForwardFloorBytes: shape.ForwardFloorBytes(), ForwardBackwardFloorBytes: shape.ForwardBackwardFloorBytes()}
		func() {
			defer func() {
				if p := recover(); p != nil {
					r.Err = fmt.Sprint(p)
				}
			}()
			fwd := MustNewExec(backend, func(in []*Node) []*Node {
				y, h := SelectiveScan(in[0], in[1], in[2], in[3], in[4], opts)
				return []*Node{y, h, syncScalar(y, h)}
			})
			defer fwd.Finalize()
			bwd := MustNewExec(backend, func(in []*Node) []*Node {
				y, h := SelectiveScan(in[0], in[1], in[2], in[3], in[4], opts)
				loss := Add(ReduceAllSum(Mul(y, in[5])), ReduceAllSum(Mul(h, in[6])))
				grads := Gradient(loss, in[0], in[1], in[2], in[3], in[4])
				return append(grads, syncScalar(grads...))
			})
			defer bwd.Finalize()
			var err error
			r.ForwardCompileS, r.ForwardMs, r.ForwardMinMs, err = timeExec(fwd, inputs[:5], reps, r.Variant+" forward")
			if err != nil {
				r.Err = "forward: " + err.Error()
				return
			}
			r.ForwardBackwardCompileS, r.ForwardBackwardMs, r.ForwardBackwardMinMs, err = timeExec(bwd, inputs, reps, r.Variant+" forward+backward")
			if err != nil {
				r.Err = "forward+backward: " + err.Error()
				return
			}
			r.ForwardGBs = float64(r.ForwardFloorBytes) / (r.ForwardMs * 1e6)
			r.ForwardBackwardGBs = float64(r.ForwardBackwardFloorBytes) / (r.ForwardBackwardMs * 1e6)
		}()
		results = append(results, r)
	}
	return results
}

// syncScalar returns the sum of the first element of each node: the scalar that timeExec copies
// to the host to wait for a run, which needs every output computed but adds one tiny kernel.
// (Until 2026-11-29 it was the sum of every element of every output, which added a reduction
// over each full output, some 50 small kernels in the forward+backward graph.)
func syncScalar(nodes ...*Node) *Node {
	var sum *Node
	for _, n := range nodes {
		starts := make([]SliceAxisSpec, n.Rank())
		for i := range starts {
			starts[i] = AxisElem(0)
		}
		v := ConvertDType(Reshape(Slice(n, starts...)), dtypes.Float32)
		if sum == nil {
			sum = v
		} else {
			sum = Add(sum, v)
		}
	}
	return sum
}

// ScanRegion, when set, is called around the timed runs of each BenchScan measurement: with
// begin true just before the first timed run and false just after the last, the label
// "<variant> forward" or "<variant> forward+backward", and the number of runs. The bench
// command uses it to trace the kernels of each region.
var ScanRegion func(label string, begin bool, runs int)

// timeExec runs e once to compile (timed), once more to warm up, then reps times, each
// synchronised by copying the last output (a scalar) to the host. Times in ms, compile in s.
// label names the timed runs to ScanRegion.
func timeExec(e *Exec, inputs []*tensors.Tensor, reps int, label string) (compileS, medianMs, minMs float64, err error) {
	args := make([]any, len(inputs))
	for i, t := range inputs {
		args[i] = t
	}
	run := func() (time.Duration, error) {
		start := time.Now()
		outs, err := e.Exec(args...)
		if err != nil {
			return 0, err
		}
		v := tensors.ToScalar[float32](outs[len(outs)-1])
		elapsed := time.Since(start)
		for _, o := range outs {
			o.FinalizeAll()
		}
		if math.IsNaN(float64(v)) {
			return elapsed, fmt.Errorf("result is NaN")
		}
		return elapsed, nil
	}
	d, err := run()
	if err != nil {
		return 0, 0, 0, err
	}
	compileS = d.Seconds()
	if _, err = run(); err != nil {
		return
	}
	times := make([]float64, reps)
	if ScanRegion != nil {
		ScanRegion(label, true, reps)
	}
	for i := range times {
		d, err = run()
		if err != nil {
			return
		}
		times[i] = float64(d.Nanoseconds()) / 1e6
	}
	if ScanRegion != nil {
		ScanRegion(label, false, reps)
	}
	slices.Sort(times)
	return compileS, times[len(times)/2], times[0], nil
}

// WriteScanBenchTable prints results as an aligned text table.
func WriteScanBenchTable(w io.Writer, results []ScanBenchResult) error {
	if len(results) == 0 {
		return nil
	}
	s := results[0].Shape
	if _, err := fmt.Fprintf(w, "selective scan, %s, float32 (state tensor [B,T,D,N] %.1f MB; floors: fwd %.1f MB, fwd+bwd %.1f MB)\n",
		s, float64(s.StateBytes())/1e6, float64(s.ForwardFloorBytes())/1e6, float64(s.ForwardBackwardFloorBytes())/1e6); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "%-38s %10s %10s %10s %10s %10s %9s %9s\n",
		"variant", "fwd ms", "fwd min", "f+b ms", "f+b min", "compile s", "fwd GB/s", "f+b GB/s"); err != nil {
		return err
	}
	for _, r := range results {
		var err error
		if r.Err != "" {
			_, err = fmt.Fprintf(w, "%-38s failed: %s\n", r.Variant, r.Err)
		} else {
			_, err = fmt.Fprintf(w, "%-38s %10.3f %10.3f %10.3f %10.3f %10.1f %9.1f %9.1f\n", r.Variant,
				r.ForwardMs, r.ForwardMinMs, r.ForwardBackwardMs, r.ForwardBackwardMinMs,
				r.ForwardCompileS+r.ForwardBackwardCompileS, r.ForwardGBs, r.ForwardBackwardGBs)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// CheckScan compares the graph scans on backend with the references, for the default options
// and every variant of ScanBenchVariants: the forward against the float64 SelectiveScanReference
// at B=2, T=300, D=64, N=16 (relative error ≤ 2e-5 for y and hT), and the gradients of a random
// projection of y and hT against automatic differentiation of the sequential graph at T=100
// (relative error ≤ 1e-4 per input). It returns an error listing every failure.
func CheckScan(backend backends.Backend) error {
	rng := rand.New(rand.NewPCG(7, 8))
	variants := append([]ScanOptions{{}}, ScanBenchVariants()...)
	var failures []string
	fail := func(format string, args ...any) { failures = append(failures, fmt.Sprintf(format, args...)) }

	// Forward against the float64 reference.
	fs := ScanShape{B: 2, T: 300, D: 64, N: 16}
	in := randomHostScanInputs(rng, fs)
	wantY, wantH := SelectiveScanReference(in[0], in[1], in[5][0], in[2], in[3])
	args := hostScanTensors(in[:4], in[5][0])
	for _, opts := range variants {
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("%v", p)
				}
			}()
			e := MustNewExec(backend, func(x, dt, a, b, c *Node) []*Node {
				y, h := SelectiveScan(x, dt, a, b, c, opts)
				return []*Node{y, h}
			})
			defer e.Finalize()
			out, err := e.Exec(args...)
			if err != nil {
				return err
			}
			ey := relErrHost(tensors.MustCopyFlatData[float32](out[0]), wantY)
			eh := relErrHost(tensors.MustCopyFlatData[float32](out[1]), wantH)
			if !(ey <= 2e-5 && eh <= 2e-5) {
				fail("forward %s at %s: relative error y %.3g, hT %.3g (tolerance 2e-5)", opts, fs, ey, eh)
			}
			return nil
		}()
		if err != nil {
			fail("forward %s at %s: %v", opts, fs, err)
		}
	}

	// Gradients against the sequential graph.
	gs := ScanShape{B: 2, T: 100, D: 32, N: 16}
	gin := randomHostScanInputs(rng, gs)
	gargs := append(hostScanTensors(gin[:4], gin[5][0]), tensorFrom3(gin[4]), tensorFrom3(randomHost3(rng, gs.B, gs.D, gs.N)))
	gradExec := func(opts ScanOptions) ([][]float32, error) {
		e := MustNewExec(backend, func(in []*Node) []*Node {
			y, h := SelectiveScan(in[0], in[1], in[2], in[3], in[4], opts)
			loss := Add(ReduceAllSum(Mul(y, in[5])), ReduceAllSum(Mul(h, in[6])))
			return Gradient(loss, in[0], in[1], in[2], in[3], in[4])
		})
		defer e.Finalize()
		out, err := e.Exec(gargs...)
		if err != nil {
			return nil, err
		}
		res := make([][]float32, len(out))
		for i, o := range out {
			res[i] = tensors.MustCopyFlatData[float32](o)
		}
		return res, nil
	}
	want, err := gradExec(ScanOptions{Method: ScanSequential})
	if err != nil {
		return fmt.Errorf("bm.CheckScan: sequential gradient at %s: %w", gs, err)
	}
	names := []string{"x", "delta", "A", "Bm", "Cm"}
	for _, opts := range variants {
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("%v", p)
				}
			}()
			got, err := gradExec(opts)
			if err != nil {
				return err
			}
			for i, name := range names {
				w := make([]float64, len(want[i]))
				for j, v := range want[i] {
					w[j] = float64(v)
				}
				if e := relErrFlat(got[i], w); !(e <= 1e-4) {
					fail("gradient %s of %s at %s: relative error %.3g vs sequential (tolerance 1e-4)", opts, name, gs, e)
				}
			}
			return nil
		}()
		if err != nil {
			fail("gradient %s at %s: %v", opts, gs, err)
		}
	}
	if len(failures) > 0 {
		msg := fmt.Sprintf("bm.CheckScan: %d failures:", len(failures))
		for _, f := range failures {
			msg += "\n  " + f
		}
		return fmt.Errorf("%s", msg)
	}
	return nil
}

// randomHostScanInputs draws x, Δ, B, C [B][T][·], the cotangent wy [B][T][D] and, as the
// single element of the sixth entry, A [D][N], with the magnitudes of a trained layer.
func randomHostScanInputs(rng *rand.Rand, s ScanShape) [6][][][]float64 {
	var out [6][][][]float64
	out[0] = randomHost3(rng, s.B, s.T, s.D)
	out[1] = randomHost3(rng, s.B, s.T, s.D)
	for _, a := range out[1] {
		for _, b := range a {
			for i, z := range b {
				b[i] = min(0.5, max(0.001, math.Log1p(math.Exp(z-2))))
			}
		}
	}
	out[2] = randomHost3(rng, s.B, s.T, s.N)
	out[3] = randomHost3(rng, s.B, s.T, s.N)
	out[4] = randomHost3(rng, s.B, s.T, s.D)
	a := randomHost3(rng, 1, s.D, s.N)
	for d := range a[0] {
		for n := range a[0][d] {
			a[0][d][n] = -float64(n+1) * math.Exp(0.1*a[0][d][n])
		}
	}
	out[5] = a
	return out
}

func randomHost3(rng *rand.Rand, a, b, c int) [][][]float64 {
	v := make([][][]float64, a)
	for i := range v {
		v[i] = make([][]float64, b)
		for j := range v[i] {
			v[i][j] = make([]float64, c)
			for k := range v[i][j] {
				v[i][j][k] = rng.NormFloat64()
			}
		}
	}
	return v
}

func tensorFrom3(v [][][]float64) *tensors.Tensor {
	data := make([]float32, 0, len(v)*len(v[0])*len(v[0][0]))
	for _, a := range v {
		for _, b := range a {
			for _, c := range b {
				data = append(data, float32(c))
			}
		}
	}
	return tensors.FromFlatDataAndDimensions(data, len(v), len(v[0]), len(v[0][0]))
}

// hostScanTensors returns x, Δ, A, B, C as float32 tensors (the argument order of SelectiveScan).
func hostScanTensors(xdbc [][][][]float64, a [][]float64) []any {
	flatA := make([]float32, 0, len(a)*len(a[0]))
	for _, row := range a {
		for _, v := range row {
			flatA = append(flatA, float32(v))
		}
	}
	return []any{tensorFrom3(xdbc[0]), tensorFrom3(xdbc[1]), tensors.FromFlatDataAndDimensions(flatA, len(a), len(a[0])),
		tensorFrom3(xdbc[2]), tensorFrom3(xdbc[3])}
}

func relErrHost(got []float32, want [][][]float64) float64 {
	var w []float64
	for _, a := range want {
		for _, b := range a {
			w = append(w, b...)
		}
	}
	return relErrFlat(got, w)
}

// relErrFlat returns ‖got − want‖ / ‖want‖ (+Inf on a length mismatch). Where want is all
// zeros (the gradient of A over one time step) it returns the absolute error ‖got‖ instead of
// 0/0, so that a comparison against a tolerance never sees NaN.
func relErrFlat(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	num, den := 0.0, 0.0
	for i := range got {
		e := float64(got[i]) - want[i]
		num += e * e
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
