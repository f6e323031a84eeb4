package train

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/experiments/results"
	"blackmamba/xla"
)

var testBackend = func() backends.Backend {
	b, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		panic(err)
	}
	return b
}()

const toyVocab = 32

// synthBatches is a token stream with a learnable bigram structure: each next token is
// (3·prev + 1 + u) mod 32 with u uniform in {0..3}, so the best possible loss is ln 4 ≈ 1.386
// against ln 32 ≈ 3.466 for a uniform guess. Batch i depends only on (seed, i).
type synthBatches struct {
	seed     uint64
	b, t     int
	idx      uint64
	poisonAt int64 // batch index whose first token is replaced by 999 (-1: never)
}

func newSynth(seed uint64, b, t int) *synthBatches {
	return &synthBatches{seed: seed, b: b, t: t, poisonAt: -1}
}

func (s *synthBatches) Next() ([]int32, error) {
	rng := rand.New(rand.NewPCG(s.seed, s.idx))
	out := make([]int32, s.b*(s.t+1))
	for r := 0; r < s.b; r++ {
		prev := rng.IntN(toyVocab)
		for j := 0; j <= s.t; j++ {
			out[r*(s.t+1)+j] = int32(prev)
			prev = (3*prev + 1 + rng.IntN(4)) % toyVocab
		}
	}
	if int64(s.idx) == s.poisonAt {
		out[0] = 999
	}
	s.idx++
	return out, nil
}

func (s *synthBatches) State() []byte { return binary.LittleEndian.AppendUint64(nil, s.idx) }

func (s *synthBatches) Restore(b []byte) error {
	if len(b) != 8 {
		return fmt.Errorf("synthetic batches state: %d bytes, want 8", len(b))
	}
	s.idx = binary.LittleEndian.Uint64(b)
	return nil
}

// toyLoss is a bigram model: embedding [32,16], a norm-like scale [16], a head [16,32] plus
// bias; mean next-token cross-entropy. A token ≥ 32 in the batch makes the loss NaN. Extras:
// "counts/toy" (predictions bucketed into 4 groups, [4]) and "logit_sq" (mean squared logit).
func toyLoss(ctx *context.Context, tokens *Node) (*Node, map[string]*Node) {
	g := tokens.Graph()
	T := tokens.Shape().Dimensions[1] - 1
	poison := GreaterOrEqual(ReduceAllMax(tokens), Scalar(g, dtypes.Int32, toyVocab))
	clean := MinScalar(tokens, toyVocab-1)
	in := Slice(clean, AxisRange(), AxisRange(0, T))
	tgt := Slice(clean, AxisRange(), AxisRange(1, T+1))
	emb := ctx.In("embed").VariableWithShape("weight", shapes.Make(dtypes.Float32, toyVocab, 16)).ValueGraph(g)
	scale := ctx.In("norm").WithInitializer(initializers.One).
		VariableWithShape("weight", shapes.Make(dtypes.Float32, 16)).ValueGraph(g)
	w := ctx.In("head").VariableWithShape("weight", shapes.Make(dtypes.Float32, 16, toyVocab)).ValueGraph(g)
	bias := ctx.In("head").VariableWithShape("bias", shapes.Make(dtypes.Float32, toyVocab)).ValueGraph(g)
	h := Mul(Gather(emb, ExpandAxes(in, -1)), Reshape(scale, 1, 1, 16))       // [B, T, 16]
	logits := Add(Einsum("btd,dv->btv", h, w), Reshape(bias, 1, 1, toyVocab)) // [B, T, V]
	nll := Neg(ReduceSum(Mul(LogSoftmax(logits, -1), OneHot(tgt, toyVocab, dtypes.Float32)), -1))
	loss := Where(poison, Scalar(g, dtypes.Float32, math.NaN()), ReduceAllMean(nll))
	B := tokens.Shape().Dimensions[0]
	groups := ArgMax(ReduceMax(Reshape(logits, B, T, 4, toyVocab/4), -1), -1, dtypes.Int32)
	counts := ReduceSum(OneHot(groups, 4, dtypes.Int32), 0, 1)
	return loss, map[string]*Node{"counts/toy": counts, "logit_sq": ReduceAllMean(Square(logits))}
}

func newToyCtx() *context.Context {
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(42))
	return ctx
}

func toyConfig(dir string, steps int) Config {
	opt := DefaultAdamW(2e-2, steps)
	opt.Schedule.Warmup = 3
	return Config{
		Batch: 4, SeqLen: 16, Optimizer: opt, FLOPsPerToken: 6 * 1100,
		Dir: dir, LogEvery: 1, CheckpointEvery: 5, EvalEvery: 5, EvalBatches: 2,
		HeldOut:  map[string]Batches{"synth": newSynth(7, 4, 16)},
		Progress: &bytes.Buffer{},
	}
}

func TestSchedule(t *testing.T) {
	s := Schedule{Peak: 1e-3, Min: 1e-4, Warmup: 4, Total: 20}
	cases := []struct {
		step int
		want float64
	}{
		{0, 2.5e-4}, {1, 5e-4}, {3, 1e-3}, {4, 1e-3},
		{12, 1e-4 + 0.9e-3*0.5},                        // p = 8/16
		{8, 1e-4 + 0.9e-3*0.5*(1+math.Cos(math.Pi/4))}, // p = 4/16
		{20, 1e-4}, {25, 1e-4},
	}
	exec := MustNewExec(testBackend, func(step *Node) *Node { return s.Graph(step) })
	for _, c := range cases {
		if got := s.At(c.step); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("At(%d) = %g, want %g", c.step, got, c.want)
		}
		got := float64(tensors.ToScalar[float32](exec.MustExec1(int64(c.step))))
		if math.Abs(got-c.want) > 1e-6*c.want {
			t.Errorf("Graph(%d) = %g, want %g (rel. tol 1e-6)", c.step, got, c.want)
		}
	}
}

// adamRef is a float64 AdamW on flat parameter vectors, mirroring AdamW's documented update.
type adamRef struct {
	o    AdamW
	p    [][]float64
	m, v [][]float64
	t    int
}

func (r *adamRef) step(grads [][]float64, decay []bool) (gnorm, lr float64) {
	for _, g := range grads {
		for _, x := range g {
			gnorm += x * x
		}
	}
	gnorm = math.Sqrt(gnorm)
	scale := 1.0
	if r.o.ClipNorm > 0 {
		scale = min(1, r.o.ClipNorm/gnorm)
	}
	lr = r.o.Schedule.At(r.t)
	r.t++
	c1 := 1 - math.Pow(r.o.Beta1, float64(r.t))
	c2 := 1 - math.Pow(r.o.Beta2, float64(r.t))
	for i := range r.p {
		for j := range r.p[i] {
			g := grads[i][j] * scale
			r.m[i][j] = r.o.Beta1*r.m[i][j] + (1-r.o.Beta1)*g
			r.v[i][j] = r.o.Beta2*r.v[i][j] + (1-r.o.Beta2)*g*g
			u := (r.m[i][j] / c1) / (math.Sqrt(r.v[i][j]/c2) + r.o.Eps)
			if decay[i] {
				u += r.o.WeightDecay * r.p[i][j]
			}
			r.p[i][j] -= lr * u
		}
	}
	return gnorm, lr
}

// TestAdamWMatchesReference trains L = Σ A⊙(W−T)² + Σ C⊙(n−U)² (W at /lin/weight is decayed,
// n at /norm/weight is not) for 6 steps and compares parameters, first moments, gradient norm
// and learning rate after every step with a float64 AdamW (abs. tol 2e-6; values are O(1)).
func TestAdamWMatchesReference(t *testing.T) {
	A := []float64{1, 2, 0.5, 3, 1.5, 0.25}
	T := []float64{0.3, -0.2, 0.8, 0.1, -0.5, 0.9}
	C := []float64{2, 0.7}
	U := []float64{1.5, -0.4}
	w0 := []float64{1, 0.5, -0.3, 0.2, 0.4, -1}
	n0 := []float64{1, 1}
	f32 := func(x []float64) []float32 {
		out := make([]float32, len(x))
		for i, v := range x {
			out[i] = float32(v)
		}
		return out
	}
	for _, tc := range []struct {
		name           string
		clip, wd, peak float64
	}{
		{"plain", 0, 0, 0.05},
		{"clip+decay", 1.0, 0.1, 0.05},
		{"clip-always", 0.1, 0.3, 0.02},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt := AdamW{Schedule: Schedule{Peak: tc.peak, Min: tc.peak / 10, Warmup: 2, Total: 6},
				Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: tc.wd, ClipNorm: tc.clip}
			loss := func(ctx *context.Context, tokens *Node) (*Node, map[string]*Node) {
				g := tokens.Graph()
				w := ctx.In("lin").VariableWithValue("weight", tensors.FromFlatDataAndDimensions(f32(w0), 2, 3)).ValueGraph(g)
				n := ctx.In("norm").VariableWithValue("weight", f32(n0)).ValueGraph(g)
				cA := Const(g, tensors.FromFlatDataAndDimensions(f32(A), 2, 3))
				cT := Const(g, tensors.FromFlatDataAndDimensions(f32(T), 2, 3))
				l := Add(ReduceAllSum(Mul(cA, Square(Sub(w, cT)))),
					ReduceAllSum(Mul(Const(g, f32(C)), Square(Sub(n, Const(g, f32(U)))))))
				// The tokens take no part in this objective.
				l = Add(l, MulScalar(ConvertDType(ReduceAllSum(tokens), dtypes.Float32), 0))
				return l, nil
			}
			ctx := context.New()
			tr, err := New(testBackend, ctx, loss, Config{Batch: 1, SeqLen: 1, Optimizer: opt})
			if err != nil {
				t.Fatal(err)
			}
			ref := &adamRef{o: opt,
				p: [][]float64{append([]float64{}, w0...), append([]float64{}, n0...)},
				m: [][]float64{make([]float64, 6), make([]float64, 2)},
				v: [][]float64{make([]float64, 6), make([]float64, 2)}}
			decay := []bool{true, false}
			clipped := 0
			for s := 0; s < 6; s++ {
				grads := [][]float64{make([]float64, 6), make([]float64, 2)}
				for j := range grads[0] {
					grads[0][j] = 2 * A[j] * (ref.p[0][j] - T[j])
				}
				for j := range grads[1] {
					grads[1][j] = 2 * C[j] * (ref.p[1][j] - U[j])
				}
				gn, lr := ref.step(grads, decay)
				if tc.clip > 0 && gn > tc.clip {
					clipped++
				}
				r, err := tr.Step([]int32{0, 0})
				if err != nil {
					t.Fatal(err)
				}
				if math.Abs(r.GradNorm-gn) > 2e-6*max(1, gn) || math.Abs(r.LR-lr) > 1e-6*lr {
					t.Fatalf("step %d: grad norm %g lr %g, reference %g %g", s+1, r.GradNorm, r.LR, gn, lr)
				}
				for i, name := range []string{"/lin/weight", "/norm/weight"} {
					sc, nm := context.SplitScope(name)
					got := tensors.MustCopyFlatData[float32](ctx.GetVariableByScopeAndName(sc, nm).MustValue())
					gotM := tensors.MustCopyFlatData[float32](
						ctx.GetVariableByScopeAndName(OptimizerScope+"/adam_m"+sc, nm).MustValue())
					for j := range got {
						if d := math.Abs(float64(got[j]) - ref.p[i][j]); d > 2e-6 {
							t.Fatalf("step %d: %s[%d] = %.8f, reference %.8f (diff %.2g)", s+1, name, j, got[j], ref.p[i][j], d)
						}
						if d := math.Abs(float64(gotM[j]) - ref.m[i][j]); d > 2e-6*max(1, math.Abs(ref.m[i][j])) {
							t.Fatalf("step %d: m of %s[%d] = %.8f, reference %.8f", s+1, name, j, gotM[j], ref.m[i][j])
						}
					}
				}
			}
			if tc.name == "clip-always" && clipped != 6 {
				t.Errorf("clipping was active in %d of 6 steps, the case expects all", clipped)
			}
			if st := tensors.ToScalar[int64](ctx.GetVariableByScopeAndName(OptimizerScope, StepName).MustValue()); st != 6 {
				t.Errorf("step variable = %d, want 6", st)
			}
		})
	}
}

func TestDefaultNoDecay(t *testing.T) {
	for name, want := range map[string]bool{
		"/decoder/layers/0/mixer/A_log":        true,
		"/decoder/layers/0/mixer/D":            true,
		"/decoder/layers/0/mixer/dt_proj_bias": true,
		"/decoder/layers/0/mixer/conv1d_bias":  true,
		"/decoder/layers/1/norm/weight":        true,
		"/decoder/final_layernorm/bias":        true,
		"/decoder/final_layernorm/weight":      true,
		"/decoder/layers/0/mixer/in_proj":      false,
		"/decoder/layers/1/mixer/fc1":          false,
		"/embedding/word_embeddings/weight":    false,
	} {
		if got := DefaultNoDecay(name); got != want {
			t.Errorf("DefaultNoDecay(%q) = %v, want %v", name, got, want)
		}
	}
}

func readLog(t *testing.T, dir string) []results.TrainRecord {
	t.Helper()
	recs, err := results.ReadTrainLog(filepath.Join(dir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestLossDecreases trains the bigram toy for 60 steps: the loss must fall from about ln 32
// (3.47) to below 2.2, on both the training stream and the held-out stream (best: ln 4 = 1.39).
func TestLossDecreases(t *testing.T) {
	dir := t.TempDir()
	cfg := toyConfig(dir, 60)
	cfg.LogEvery, cfg.CheckpointEvery, cfg.EvalEvery = 10, 30, 30
	tr, err := New(testBackend, newToyCtx(), toyLoss, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := tr.Run(newSynth(1, 4, 16))
	if err != nil {
		t.Fatal(err)
	}
	recs := readLog(t, dir)
	if len(recs) != 6 || recs[5].Step != 60 {
		t.Fatalf("got %d records ending at step %d, want 6 ending at 60", len(recs), recs[len(recs)-1].Step)
	}
	first, last := recs[0], recs[5]
	t.Logf("loss %.3f → %.3f, held-out %v, balance %v", first.Loss, last.Loss, last.HeldOut, last.BalanceCV)
	if first.Loss < 2.8 || last.Loss > 2.2 {
		t.Errorf("training loss %.3f → %.3f: want a start near ln 32 = 3.47 and an end below 2.2", first.Loss, last.Loss)
	}
	if h := sum.HeldOut["synth"]; !(h < 2.2) || h != last.HeldOut["synth"] {
		t.Errorf("held-out loss %v (record %v): want < 2.2", h, last.HeldOut)
	}
	if recs[2].HeldOut == nil || recs[1].HeldOut != nil {
		t.Errorf("held-out losses expected at steps 30 and 60 only")
	}
	if want := float64(60*4*16) * 6 * 1100; last.FLOPs != want || last.Tokens != 60*4*16 {
		t.Errorf("tokens %d flops %g, want %d and %g", last.Tokens, last.FLOPs, 60*4*16, want)
	}
	var total float64
	for _, c := range last.ExpertCounts["toy"] {
		total += c
	}
	if total != 10*4*16 {
		t.Errorf("counts over a 10-step record sum to %g, want %d", total, 10*4*16)
	}
	if cv := last.BalanceCV["toy"]; math.Abs(cv-results.CoefficientOfVariation(last.ExpertCounts["toy"])) > 1e-12 {
		t.Errorf("balance CV %g does not match the counts %v", cv, last.ExpertCounts["toy"])
	}
	if _, ok := last.Extras["logit_sq"]; !ok {
		t.Errorf("scalar extra logit_sq missing from %v", last.Extras)
	}
	if !strings.Contains(cfg.Progress.(*bytes.Buffer).String(), "step 60/60") {
		t.Errorf("progress output lacks the final step line:\n%s", cfg.Progress)
	}
}

var errCrash = errors.New("simulated crash")

// TestResumeEquivalence runs 20 steps uninterrupted, and separately runs until step 13,
// crashes (all in-memory state dropped; checkpoints at 5 and 10 on disk), resumes in a fresh
// context and runs to 20. Per-step losses, gradient norms, learning rates, held-out losses and
// the final variables must be bitwise identical, and the metrics file must hold steps 1..20
// exactly once.
func TestResumeEquivalence(t *testing.T) {
	const steps = 20
	dirA := t.TempDir()
	trA, err := New(testBackend, newToyCtx(), toyLoss, toyConfig(dirA, steps))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trA.Run(newSynth(1, 4, 16)); err != nil {
		t.Fatal(err)
	}

	dirB := t.TempDir()
	cfg := toyConfig(dirB, steps)
	cfg.OnRecord = func(r results.TrainRecord) error {
		if r.Step == 13 {
			return errCrash
		}
		return nil
	}
	trB, _ := New(testBackend, newToyCtx(), toyLoss, cfg)
	if _, err := trB.Run(newSynth(1, 4, 16)); !errors.Is(err, errCrash) {
		t.Fatalf("first part: got %v, want the simulated crash", err)
	}
	if n := len(readLog(t, dirB)); n != 13 {
		t.Fatalf("after the crash the metrics file has %d records, want 13", n)
	}
	cfg = toyConfig(dirB, steps)
	cfg.Resume = true
	ctxB := newToyCtx()
	trB, _ = New(testBackend, ctxB, toyLoss, cfg)
	sum, err := trB.Run(newSynth(1, 4, 16))
	if err != nil {
		t.Fatal(err)
	}
	if sum.ResumedFrom != 10 {
		t.Errorf("resumed from step %d, want 10", sum.ResumedFrom)
	}
	a, b := readLog(t, dirA), readLog(t, dirB)
	if len(a) != steps || len(b) != steps {
		t.Fatalf("records: %d uninterrupted, %d resumed; want %d each", len(a), len(b), steps)
	}
	for i := range a {
		ra, rb := a[i], b[i]
		if ra.Step != i+1 || rb.Step != i+1 || ra.Loss != rb.Loss || ra.GradNorm != rb.GradNorm ||
			ra.LR != rb.LR || ra.HeldOut["synth"] != rb.HeldOut["synth"] || ra.FLOPs != rb.FLOPs {
			t.Errorf("record %d differs:\n uninterrupted %+v\n resumed       %+v", i, ra, rb)
		}
	}
	sameVariables(t, trA.Context(), ctxB)
}

// sameVariables checks that every variable of a is in b, resumed from a's checkpoint, with the
// same bytes.
func sameVariables(t *testing.T, a, b *context.Context) {
	t.Helper()
	for v := range a.IterVariables() {
		w := b.GetVariableByScopeAndName(v.Scope(), v.Name())
		if w == nil {
			t.Fatalf("variable %s missing after resume", v.ScopeAndName())
		}
		x, y := v.MustValue(), w.MustValue()
		var eq bool
		x.ConstBytes(func(bx []byte) { y.ConstBytes(func(by []byte) { eq = bytes.Equal(bx, by) }) })
		if !eq {
			t.Errorf("variable %s differs between the trained and the resumed run", v.ScopeAndName())
		}
	}
}

// TestResumeFinishedRun resumes a run from its final checkpoint: no step is taken, the metrics
// file is left as it was, the variables are the trained ones, and the summary reports what the
// run reached (steps, last loss, last held-out losses, wall time recorded in the checkpoint).
func TestResumeFinishedRun(t *testing.T) {
	const steps = 10
	dir := t.TempDir()
	ctxA := newToyCtx()
	trA, err := New(testBackend, ctxA, toyLoss, toyConfig(dir, steps))
	if err != nil {
		t.Fatal(err)
	}
	first, err := trA.Run(newSynth(1, 4, 16))
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(first.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	// What a process killed while writing a checkpoint leaves: removed on resuming.
	stale := filepath.Join(dir, ".checkpoint-00000020.safetensors.tmp-123")
	if err := os.WriteFile(stale, []byte("cut short"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := toyConfig(dir, steps)
	cfg.Resume = true
	cfg.OnRecord = func(r results.TrainRecord) error {
		return fmt.Errorf("step %d taken after resuming a finished run", r.Step)
	}
	var progress strings.Builder
	cfg.Progress = &progress
	ctxB := newToyCtx()
	trB, _ := New(testBackend, ctxB, toyLoss, cfg)
	sum, err := trB.Run(newSynth(1, 4, 16))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) || !strings.Contains(progress.String(), "did not finish") {
		t.Errorf("the unfinished checkpoint write was not removed (stat: %v); progress:\n%s", err, progress.String())
	}
	if sum.ResumedFrom != steps || sum.Steps != steps || sum.Loss != first.Loss ||
		sum.HeldOut["synth"] != first.HeldOut["synth"] || len(sum.HeldOut) != len(first.HeldOut) {
		t.Errorf("summary after resuming the finished run:\n %+v\nwant the first run's:\n %+v", sum, first)
	}
	if !(sum.WallSeconds > 0) || sum.WallSeconds > first.WallSeconds+1 {
		t.Errorf("wall %.3fs after resuming, the run itself took %.3fs", sum.WallSeconds, first.WallSeconds)
	}
	after, err := os.ReadFile(sum.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("metrics file changed by resuming a finished run:\n before %q\n after  %q", before, after)
	}
	sameVariables(t, ctxA, ctxB)
}

func TestNaNStopsRun(t *testing.T) {
	dir := t.TempDir()
	data := newSynth(1, 4, 16)
	data.poisonAt = 7 // the 8th batch
	tr, _ := New(testBackend, newToyCtx(), toyLoss, toyConfig(dir, 20))
	_, err := tr.Run(data)
	if err == nil {
		t.Fatal("run with a NaN loss at step 8 succeeded")
	}
	for _, want := range []string{"step 8:", "not finite", "checkpoint-00000005.safetensors"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

// TestTruncatedCheckpoint damages the newest checkpoint: loading it reports the truncation,
// and resuming falls back to the previous checkpoint and still ends with one record per step.
func TestTruncatedCheckpoint(t *testing.T) {
	dir := t.TempDir()
	cfg := toyConfig(dir, 10)
	tr, _ := New(testBackend, newToyCtx(), toyLoss, cfg)
	if _, err := tr.Run(newSynth(1, 4, 16)); err != nil {
		t.Fatal(err)
	}
	newest := checkpointPath(dir, 10)
	st, err := os.Stat(newest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(newest, st.Size()/2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadCheckpoint(newest); err == nil || !strings.Contains(err.Error(), "truncated") ||
		!strings.Contains(err.Error(), newest) {
		t.Fatalf("loading the truncated checkpoint: got %v, want an error naming the file and the truncation", err)
	}
	cfg = toyConfig(dir, 10)
	cfg.Resume = true
	tr, _ = New(testBackend, newToyCtx(), toyLoss, cfg)
	sum, err := tr.Run(newSynth(1, 4, 16))
	if err != nil {
		t.Fatal(err)
	}
	out := cfg.Progress.(*bytes.Buffer).String()
	if sum.ResumedFrom != 5 || !strings.Contains(out, "checkpoint-00000010.safetensors") ||
		!strings.Contains(out, "resuming from "+checkpointPath(dir, 5)) {
		t.Errorf("resumed from %d; progress output:\n%s", sum.ResumedFrom, out)
	}
	if recs := readLog(t, dir); len(recs) != 10 || recs[9].Step != 10 {
		t.Errorf("metrics file has %d records after the resume, want 10", len(recs))
	}
}

func TestRunDirectoryChecks(t *testing.T) {
	dir := t.TempDir()
	tr, _ := New(testBackend, newToyCtx(), toyLoss, toyConfig(dir, 5))
	if _, err := tr.Run(newSynth(1, 4, 16)); err != nil {
		t.Fatal(err)
	}
	tr, _ = New(testBackend, newToyCtx(), toyLoss, toyConfig(dir, 5))
	if _, err := tr.Run(newSynth(1, 4, 16)); err == nil || !strings.Contains(err.Error(), "already holds checkpoints") {
		t.Errorf("fresh run in a used directory: got %v", err)
	}
	cfg := toyConfig(dir, 5)
	cfg.Resume = true
	cfg.Optimizer.Schedule.Peak = 3e-2
	tr, _ = New(testBackend, newToyCtx(), toyLoss, cfg)
	if _, err := tr.Run(newSynth(1, 4, 16)); err == nil || !strings.Contains(err.Error(), "hyperparameters differ") {
		t.Errorf("resume with another learning rate: got %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	base := toyConfig("", 10)
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"batch", func(c *Config) { c.Batch = 0 }, "batch 0"},
		{"ckpt multiple", func(c *Config) { c.LogEvery, c.CheckpointEvery = 3, 5 }, "checkpoint_every 5"},
		{"eval multiple", func(c *Config) { c.LogEvery, c.CheckpointEvery, c.EvalEvery = 2, 4, 3 }, "eval_every 3"},
		{"beta2", func(c *Config) { c.Optimizer.Beta2 = 1 }, "beta2 1"},
		{"lr", func(c *Config) { c.Optimizer.Schedule.Peak = 0 }, "peak 0"},
		{"alias", func(c *Config) { c.Alias = "yes" }, `alias "yes"`},
	} {
		c := base
		tc.edit(&c)
		if _, err := New(testBackend, newToyCtx(), toyLoss, c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
	tr, _ := New(testBackend, newToyCtx(), toyLoss, base)
	if _, err := tr.Step(make([]int32, 7)); err == nil || !strings.Contains(err.Error(), "7 tokens") {
		t.Errorf("wrong batch size: got %v", err)
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.safetensors")
	ts := map[string]*tensors.Tensor{
		"/a/w":  tensors.FromFlatDataAndDimensions([]float32{1, -2.5, 3, 4e-9, 5, 6}, 2, 3),
		"/step": tensors.FromScalar(int64(12345)),
		"/b":    tensors.FromFlatDataAndDimensions([]int32{-7, 8}, 2),
	}
	if err := SaveCheckpoint(p, ts, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	got, meta, err := LoadCheckpoint(p)
	if err != nil {
		t.Fatal(err)
	}
	if meta["k"] != "v" || len(meta[MetaDataSHA256]) != 64 {
		t.Errorf("metadata %v", meta)
	}
	if w := tensors.MustCopyFlatData[float32](got["/a/w"]); w[1] != -2.5 || w[3] != 4e-9 || !got["/a/w"].Shape().Equal(ts["/a/w"].Shape()) {
		t.Errorf("/a/w = %v %s", w, got["/a/w"].Shape())
	}
	if s := tensors.ToScalar[int64](got["/step"]); s != 12345 {
		t.Errorf("/step = %d", s)
	}
	// Flip one data byte: the checksum must catch it.
	raw, _ := os.ReadFile(p)
	raw[len(raw)-1] ^= 0xff
	os.WriteFile(p, raw, 0o644)
	if _, _, err := LoadCheckpoint(p); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("damaged data: got %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

// windowSource serves fixed windows [T+1] in batches of up to b rows, then io.EOF.
type windowSource struct {
	windows [][]int32
	b, next int
}

func (w *windowSource) Next() ([]int32, error) {
	if w.next >= len(w.windows) {
		return nil, io.EOF
	}
	var out []int32
	for r := 0; r < w.b && w.next < len(w.windows); r++ {
		out = append(out, w.windows[w.next]...)
		w.next++
	}
	return out, nil
}
func (w *windowSource) State() []byte          { return []byte{byte(w.next)} }
func (w *windowSource) Restore(s []byte) error { w.next = int(s[0]); return nil }

// TestEvalLossShortSplit checks that a held-out source of 10 windows read in batches of 4 (4, 4,
// then a short batch of 2, then EOF) is evaluated on all 10 windows: the result equals the mean
// of the 10 windows' losses computed one at a time (1e-5 relative), whether more batches were
// asked for than the source has or not, and that an empty source is an error.
func TestEvalLossShortSplit(t *testing.T) {
	const T = 16
	src := newSynth(9, 10, T)
	flat, _ := src.Next()
	windows := make([][]int32, 10)
	for i := range windows {
		windows[i] = flat[i*(T+1) : (i+1)*(T+1)]
	}
	ctx := newToyCtx()
	cfg := Config{Batch: 4, SeqLen: T, Optimizer: DefaultAdamW(1e-2, 10)}
	tr, err := New(testBackend, ctx, toyLoss, cfg)
	if err != nil {
		t.Fatal(err)
	}
	one := cfg
	one.Batch = 1
	single, err := New(testBackend, ctx, toyLoss, one)
	if err != nil {
		t.Fatal(err)
	}
	var want float64
	for i := range windows {
		l, err := single.EvalLoss(&windowSource{windows: windows[i : i+1], b: 1}, 1)
		if err != nil {
			t.Fatal(err)
		}
		want += l / float64(len(windows))
	}
	for _, n := range []int{3, 8} {
		got, err := tr.EvalLoss(&windowSource{windows: windows, b: 4}, n)
		if err != nil {
			t.Fatalf("EvalLoss(%d batches): %v", n, err)
		}
		if math.Abs(got-want) > 1e-5*math.Abs(want) {
			t.Errorf("EvalLoss(%d batches) over 4+4+2 windows = %.7f, want the mean of the 10 windows %.7f", n, got, want)
		}
	}
	if _, err := tr.EvalLoss(&windowSource{b: 4}, 2); err == nil || !strings.Contains(err.Error(), "no window") {
		t.Errorf("EvalLoss of an empty source: err %v, want one saying there is no window", err)
	}
}

// TestAliasSameRun trains the toy model for six steps with the step's updated variables aliased
// to their buffers and without: the losses, gradient norms and every variable (weights, AdamW
// moments, step) agree bit for bit on the pure-Go backend. On the XLA backend
// (BLACKMAMBA_TEST_BACKEND) they agree within 1e-5 relative: on a GPU the embedding's gradient
// is a scatter-add whose atomic additions make two identical runs differ in their last bits
// (8e-8 relative seen on an H200, aliased or not). The step reports aliasing on the XLA backend
// with Alias "on" and "auto" (one device), never with "off" nor on the pure-Go backend.
func TestAliasSameRun(t *testing.T) {
	backend := multiDeviceBackend(t) // the test backend, or $BLACKMAMBA_TEST_BACKEND's
	type run struct {
		losses []float64
		vars   map[string][]float64
	}
	train := func(alias string) run {
		t.Helper()
		c := toyConfig("", 6)
		c.Alias = alias
		ctx := newToyCtx()
		tr, err := New(backend, ctx, toyLoss, c)
		if err != nil {
			t.Fatal(err)
		}
		var r run
		data := newSynth(3, c.Batch, c.SeqLen)
		for range 6 {
			b, _ := data.Next()
			res, err := tr.Step(b)
			if err != nil {
				t.Fatal(err)
			}
			r.losses = append(r.losses, res.Loss, res.GradNorm)
		}
		if want := alias != "off" && backend.Name() == "xla"; tr.Aliased() != want {
			t.Errorf("alias %q on backend %s: Aliased() = %v, want %v", alias, backend.Name(), tr.Aliased(), want)
		}
		r.vars = map[string][]float64{}
		for v := range ctx.IterVariables() {
			r.vars[v.ScopeAndName()] = flatFloat64(t, v.MustValue())
		}
		return r
	}
	off := train("off")
	if len(off.vars) < 13 { // 4 weights with 2 moments each, the step (and a random state)
		t.Fatalf("%d variables after training, want at least 13", len(off.vars))
	}
	same := slices.Equal[[]float64]
	if backend.Name() == "xla" {
		same = func(a, b []float64) bool {
			return slices.EqualFunc(a, b, func(x, y float64) bool { return math.Abs(x-y) <= 1e-5*math.Abs(x)+1e-12 })
		}
	}
	for _, alias := range []string{"on", "auto"} {
		got := train(alias)
		if !same(got.losses, off.losses) {
			t.Errorf("alias %q: losses and gradient norms %v, without aliasing %v", alias, got.losses, off.losses)
		}
		for name, want := range off.vars {
			if !same(got.vars[name], want) {
				t.Errorf("alias %q: variable %s = %v, without aliasing %v", alias, name, got.vars[name], want)
			}
		}
	}
}

// TestStepPackedOutputs: the train step returns its loss, gradient norm, learning rate and
// extras packed in one vector; Step unpacks each to its name, scalars of any dtype and counts
// vectors alike, in the extras' sorted order.
func TestStepPackedOutputs(t *testing.T) {
	loss := func(ctx *context.Context, tokens *Node) (*Node, map[string]*Node) {
		g := tokens.Graph()
		w := ctx.VariableWithValue("w", []float32{3, 4}).ValueGraph(g)
		l := Add(ReduceAllSum(Square(w)), MulScalar(ConvertDType(ReduceAllSum(tokens), dtypes.Float32), 0))
		return l, map[string]*Node{
			"z_scalar":   Scalar(g, dtypes.Float32, 2.5),
			"counts/x":   Const(g, []int32{1, 2, 3}),
			"a_int":      Scalar(g, dtypes.Int32, 7),
			"counts/all": Const(g, []int32{9}),
		}
	}
	opt := DefaultAdamW(1e-2, 10)
	opt.ClipNorm = 0
	tr, err := New(testBackend, context.New(), loss, Config{Batch: 1, SeqLen: 1, Optimizer: opt})
	if err != nil {
		t.Fatal(err)
	}
	r, err := tr.Step([]int32{0, 0})
	if err != nil {
		t.Fatal(err)
	}
	if r.Loss != 25 || r.GradNorm != 10 || float32(r.LR) != float32(opt.Schedule.At(0)) { // the lr is float32 on the device
		t.Errorf("loss %v, grad norm %v, lr %v; want 25, 10 (|2w|) and %v", r.Loss, r.GradNorm, r.LR, opt.Schedule.At(0))
	}
	if r.Extras["z_scalar"] != 2.5 || r.Extras["a_int"] != 7 || len(r.Extras) != 2 {
		t.Errorf("extras %v, want z_scalar 2.5 and a_int 7", r.Extras)
	}
	if !slices.Equal(r.Counts["x"], []float64{1, 2, 3}) || !slices.Equal(r.Counts["all"], []float64{9}) || len(r.Counts) != 2 {
		t.Errorf("counts %v, want x [1 2 3] and all [9]", r.Counts)
	}
}
