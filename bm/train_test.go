package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
	"github.com/gomlx/gomlx/pkg/ml/train"
	"github.com/gomlx/gomlx/pkg/ml/train/optimizers"

	"blackmamba/xla"
)

// TestMambaGradient checks the gradient of a Mamba block, with respect to its input and to
// each of its nine variables, against central finite differences. The whole path is float32
// (the scan and ComputeEinsum are float32), so the step is 1e-2 and the tolerance is 2% of the
// gradient's magnitude (|fd − g| <= 0.02·(|g| + 0.05·max|g of that tensor|)); a sign or
// factor error in any term shows up as an O(1) relative error.
func TestMambaGradient(t *testing.T) {
	backend := cpuBackend(t)
	cfg := mambaTestConfig()
	cfg.ConvKernel = 3
	const B, T = 2, 6
	rng := rand.New(rand.NewPCG(8, 8))
	u := RandomTensor(rng, 1, B, T, cfg.Dim)
	w := RandomTensor(rng, 1, B, T, cfg.Dim)
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(5))
	lossOf := func(ctx *context.Context, u, w *Node) *Node {
		return ReduceAllSum(Mul(Mamba(ctx.In("m"), cfg, u), w))
	}
	lossExec := context.MustNewExec(backend, ctx, lossOf)
	lossAt := func(u *tensors.Tensor) float64 {
		return float64(tensors.ToScalar[float32](lossExec.MustExec(u, w)[0]))
	}
	lossAt(u) // creates the variables
	vars := make([]*context.Variable, len(mambaVarNames))
	for i, n := range mambaVarNames {
		vars[i] = ctx.InspectVariable("/m", n)
	}
	gradExec := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, u, w *Node) []*Node {
		loss := lossOf(ctx, u, w)
		nodes := []*Node{u}
		for _, v := range vars {
			nodes = append(nodes, v.ValueGraph(u.Graph()))
		}
		return Gradient(loss, nodes...)
	})
	grads := gradExec.MustExec(u, w)
	const eps = 1e-2
	names := append([]string{"input u"}, mambaVarNames...)
	for k, name := range names {
		g := flat64(grads[k])
		var gmax float64
		for _, x := range g {
			gmax = max(gmax, math.Abs(x))
		}
		var base *tensors.Tensor
		if k == 0 {
			base = u
		} else {
			base = vars[k-1].MustValue()
		}
		vals := tensors.MustCopyFlatData[float32](base)
		dims := append([]int(nil), base.Shape().Dimensions...) // SetValue below invalidates base
		for trial := 0; trial < 4; trial++ {
			i := rng.IntN(len(vals))
			eval := func(delta float32) float64 {
				p := append([]float32(nil), vals...)
				p[i] += delta
				pt := tensors.FromFlatDataAndDimensions(p, dims...)
				if k == 0 {
					return lossAt(pt)
				}
				if err := vars[k-1].SetValue(pt); err != nil {
					t.Fatal(err)
				}
				return lossAt(u)
			}
			fd := (eval(eps) - eval(-eps)) / (2 * eps)
			if k > 0 {
				if err := vars[k-1].SetValue(tensors.FromFlatDataAndDimensions(vals, dims...)); err != nil {
					t.Fatal(err)
				}
			}
			if diff := math.Abs(fd - g[i]); diff > 0.02*(math.Abs(g[i])+0.05*gmax) {
				t.Errorf("d loss / d %s[%d]: finite difference %.5g, gradient %.5g", name, i, fd, g[i])
			}
		}
	}
}

// tokenStream is a train.Dataset of windows [B, T+1] of a fixed, learnable token stream: each
// token is a fixed random permutation of the one before it, with 10% of the tokens replaced at
// random (the best possible loss is about 0.1·ln 64 + H(0.1) ≈ 0.75 nats).
type tokenStream struct {
	stream   []int32
	B, T     int
	pos, rep int
}

func newTokenStream(vocab, n, B, T int) *tokenStream {
	rng := rand.New(rand.NewPCG(42, 42))
	perm := rng.Perm(vocab)
	s := []int32{1}
	for len(s) < n {
		next := perm[s[len(s)-1]]
		if rng.Float64() < 0.1 {
			next = rng.IntN(vocab)
		}
		s = append(s, int32(next))
	}
	return &tokenStream{stream: s, B: B, T: T}
}

func (d *tokenStream) Name() string { return "token stream" }
func (d *tokenStream) Reset()       { d.pos = 0 }
func (d *tokenStream) Yield() (any, []*tensors.Tensor, []*tensors.Tensor, error) {
	batch := make([]int32, 0, d.B*(d.T+1))
	for b := 0; b < d.B; b++ {
		if d.pos+d.T+1 > len(d.stream) {
			d.pos = 0
		}
		batch = append(batch, d.stream[d.pos:d.pos+d.T+1]...)
		d.pos += d.T + 1
	}
	return nil, []*tensors.Tensor{tensors.FromFlatDataAndDimensions(batch, d.B, d.T+1)}, nil, nil
}

// trainTiny trains a tiny BlackMamba for the given number of AdamW steps from seed and returns the loss of
// every step.
func trainTiny(t *testing.T, seed int64, steps int) []float32 {
	backend := cpuBackend(t)
	cfg := MustPreset("tiny")
	cfg.Vocab, cfg.VocabReal, cfg.Dim, cfg.FFN, cfg.StateSize = 64, 64, 32, 64, 8
	cfg.Pattern = "r8"
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, seed)
	opt := optimizers.Adam().LearningRate(1e-2).WeightDecay(0.01).Done()
	trainer := train.NewTrainer(backend, ctx, m.ModelFn(ForwardOptions{}), PredictionIsLoss, opt, nil, nil)
	ds := newTokenStream(cfg.Vocab, 20000, 4, 32)
	losses := make([]float32, 0, steps)
	for i := 0; i < steps; i++ {
		spec, inputs, labels, _ := ds.Yield()
		metrics, err := trainer.TrainStep(spec, inputs, labels)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		losses = append(losses, tensors.ToScalar[float32](metrics[0]))
	}
	return losses
}

// TestTrainingLowersLoss trains a tiny BlackMamba ("r8", d=32, vocab 64, T=32, batch 4,
// Sinkhorn routing, AdamW lr 1e-2) on a fixed learnable stream: the mean loss of the last 20 of
// 200 steps must be below 35% of the first step's (≈ ln 64), and a second run with the same seed
// must give bit-identical losses for its 20 steps on the pure-Go backend; on a compiling backend
// (a GPU, whose reductions XLA does not make bitwise reproducible from run to run: one H200 gave
// differences of 1e-7 relative) the same losses to 1e-5 relative.
func TestTrainingLowersLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("training run skipped in -short mode")
	}
	const steps = 200
	a := trainTiny(t, 17, steps)
	var tail float64
	for _, l := range a[steps-20:] {
		tail += float64(l) / 20
	}
	t.Logf("loss: first %.3f, mean of last 20 %.3f (ln 64 = %.3f)", a[0], tail, math.Log(64))
	if math.Abs(float64(a[0])-math.Log(64)) > 0.3 {
		t.Errorf("initial loss %.3f, want about ln 64 = %.3f", a[0], math.Log(64))
	}
	if tail > 0.35*float64(a[0]) {
		t.Errorf("loss did not fall: first %.3f, last-20 mean %.3f", a[0], tail)
	}
	b := trainTiny(t, 17, 20)
	if xla.IsPureGo(cpuBackend(t)) {
		if fmt.Sprint(a[:20]) != fmt.Sprint(b) {
			t.Errorf("same seed, different losses:\n%v\n%v", a[:20], b)
		}
		return
	}
	for i := range b {
		if d := math.Abs(float64(a[i]-b[i])) / math.Abs(float64(a[i])); d > 1e-5 {
			t.Errorf("same seed, step %d: losses %g and %g differ by %.2g relative (> 1e-5):\n%v\n%v", i, a[i], b[i], d, a[:20], b)
			break
		}
	}
}
