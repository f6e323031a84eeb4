package bm

import (
	"math"
	"math/rand"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// Test helpers shared by the norm, MLP, MoE, Sinkhorn and attention tests (prefix mt).

// mtBackend returns the test backend (see cpuBackend), created once per test binary.
func mtBackend(t testing.TB) backends.Backend { return cpuBackend(t) }

// mtCtx returns a fresh context with a fixed initialisation seed.
func mtCtx(seed int64) *context.Context {
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, seed)
	return ctx
}

// mtConfig is a small config for block tests: d=8, F=12, 2 heads of width 4, init std 0.3
// (large enough that activations and router logits are far from linear and from ties).
func mtConfig() Config {
	c := MustPreset("tiny")
	c.Dim, c.FFN, c.Heads = 8, 12, 2
	c.InitStd = 0.3
	c.Pattern = "r4a1"
	return c
}

// mtRandom returns a float32 tensor of the given dims with N(0, scale²) entries, and its values.
func mtRandom(rng *rand.Rand, scale float64, dims ...int) (*tensors.Tensor, []float64) {
	n := 1
	for _, d := range dims {
		n *= d
	}
	f32 := make([]float32, n)
	f64 := make([]float64, n)
	for i := range f32 {
		f32[i] = float32(rng.NormFloat64() * scale)
		f64[i] = float64(f32[i])
	}
	return tensors.FromFlatDataAndDimensions(f32, dims...), f64
}

// mtValues returns the values of a float32 or int32 tensor as float64 (checkFloats).
func mtValues(t testing.TB, x *tensors.Tensor) []float64 {
	t.Helper()
	return checkFloats(x)
}

// mtVar returns the current value of variable scope/name of ctx as float64.
func mtVar(t testing.TB, ctx *context.Context, scope, name string) []float64 {
	t.Helper()
	v := ctx.InspectVariable(scope, name)
	if v == nil {
		t.Fatalf("variable %s/%s not found", scope, name)
	}
	return mtValues(t, v.MustValue())
}

// mtMaxAbsDiff returns max|a−b| and max|b| (the scale for a relative error).
func mtMaxAbsDiff(a, b []float64) (diff, scale float64) {
	if len(a) != len(b) {
		return math.Inf(1), 0
	}
	for i := range a {
		diff = max(diff, math.Abs(a[i]-b[i]))
		scale = max(scale, math.Abs(b[i]))
	}
	return diff, scale
}

// mtAssertClose fails unless max|got−want| ≤ atol + rtol·max|want|.
func mtAssertClose(t testing.TB, what string, got, want []float64, atol, rtol float64) {
	t.Helper()
	diff, scale := mtMaxAbsDiff(got, want)
	if !(diff <= atol+rtol*scale) {
		t.Errorf("%s: max abs diff %.3g exceeds %.3g + %.3g·%.3g (len got %d, want %d)", what, diff, atol, rtol, scale, len(got), len(want))
	} else {
		t.Logf("%s: max abs diff %.3g (scale %.3g)", what, diff, scale)
	}
}

// mtActRef is the float64 activation of cfg.
func mtActRef(cfg Config, x float64) float64 {
	if cfg.Activation == "gelu" {
		return 0.5 * x * (1 + math.Erf(x/math.Sqrt2))
	}
	return x / (1 + math.Exp(-x))
}

// mtGatedMLPRef computes fc2(act(gate) ⊙ up) for one token x [d], fc1 [d][2F] and fc2 [F][d]
// given as flat row-major slices.
func mtGatedMLPRef(cfg Config, x, fc1, fc2 []float64) []float64 {
	d, f := len(x), len(fc2)/len(x)
	a := make([]float64, f)
	for j := range f {
		gate, up := 0.0, 0.0
		for i := range d {
			gate += x[i] * fc1[i*2*f+j]
			up += x[i] * fc1[i*2*f+f+j]
		}
		a[j] = mtActRef(cfg, gate) * up
	}
	y := make([]float64, d)
	for j := range f {
		for i := range d {
			y[i] += a[j] * fc2[j*d+i]
		}
	}
	return y
}

// mtGradCheck compares the gradients of a scalar loss with central finite differences along
// random directions: for the input x and for each named variable of scope. build returns the
// loss and optionally a "watch" node (e.g. routing choices) that must not change under the
// perturbations, since the loss is only piecewise smooth in them (the step is shrunk when it
// crosses a decision). Passing requires |fd − ⟨∇, v⟩| ≤ tol·max(|fd|, |⟨∇, v⟩|, ‖∇‖·rms(v)) + 1e-6
// for every target (the last term keeps float32 noise from failing directions along which
// the derivative happens to be small).
func mtGradCheck(t *testing.T, ctx *context.Context, x *tensors.Tensor, scope string, vars []string,
	build func(ctx *context.Context, x *Node) (loss, watch *Node), eps, tol float64, seed int64) {
	t.Helper()
	backend := mtBackend(t)
	lossExec := context.MustNewExec(backend, ctx, func(ctx *context.Context, x *Node) []*Node {
		loss, watch := build(ctx, x)
		if watch == nil {
			watch = ScalarZero(x.Graph(), dtypes.Int32)
		}
		return []*Node{loss, watch}
	})
	base := lossExec.MustExec(x)
	baseWatch := mtValues(t, base[1])
	gradExec := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, x *Node) []*Node {
		loss, _ := build(ctx, x)
		wrt := []*Node{x}
		for _, name := range vars {
			wrt = append(wrt, ctx.InspectVariable(scope, name).ValueGraph(x.Graph()))
		}
		return Gradient(loss, wrt...)
	})
	grads := gradExec.MustExec(x)
	rng := rand.New(rand.NewSource(seed))

	// eval returns the loss at the input, and whether the watched values kept their base values.
	eval := func(xIn *tensors.Tensor) (float64, bool) {
		out := lossExec.MustExec(xIn)
		d, _ := mtMaxAbsDiff(mtValues(t, out[1]), baseWatch)
		return mtValues(t, out[0])[0], d == 0
	}
	// check perturbs one target along a random direction; set installs perturbed values and
	// returns the input to evaluate the loss on.
	check := func(what string, grad []float64, value []float64, set func(v []float64) *tensors.Tensor) {
		rms := 0.0
		for _, v := range value {
			rms += v * v
		}
		rms = math.Sqrt(rms / float64(len(value)))
		if rms == 0 {
			rms = 1
		}
		dir := make([]float64, len(value))
		dd, gradNorm := 0.0, 0.0
		for i := range dir {
			dir[i] = rng.NormFloat64() * rms
			dd += dir[i] * grad[i]
			gradNorm += grad[i] * grad[i]
		}
		// typical is the size of ⟨∇, v⟩ for a random direction v of this scale: ‖∇‖·rms(v).
		typical := math.Sqrt(gradNorm) * rms
		shifted := func(s float64) *tensors.Tensor {
			v := make([]float64, len(value))
			for i := range v {
				v[i] = value[i] + s*dir[i]
			}
			return set(v)
		}
		// Shrink the step (up to 64×) when a perturbation crosses a routing decision.
		var fd float64
		for step := eps; ; step /= 4 {
			plus, okPlus := eval(shifted(step))
			minus, okMinus := eval(shifted(-step))
			if okPlus && okMinus {
				fd = (plus - minus) / (2 * step)
				break
			}
			if step < eps/64 {
				t.Fatalf("gradient w.r.t. %s: the watched values (routing) change under perturbations down to %g; the loss is not smooth there", what, step)
			}
		}
		if math.Abs(fd-dd) > tol*max(math.Abs(fd), math.Abs(dd), typical)+1e-6 {
			t.Errorf("gradient w.r.t. %s: finite difference %.6g vs analytic %.6g (rel err %.2g)", what, fd, dd, math.Abs(fd-dd)/max(math.Abs(fd), 1e-30))
		} else {
			t.Logf("gradient w.r.t. %s: finite difference %.6g vs analytic %.6g", what, fd, dd)
		}
	}
	xDims := x.Shape().Dimensions
	check("input", mtValues(t, grads[0]), mtValues(t, x), func(v []float64) *tensors.Tensor {
		return mtF32Tensor(v, xDims...)
	})
	for i, name := range vars {
		variable := ctx.InspectVariable(scope, name)
		orig := variable.MustValue()
		origVals := mtValues(t, orig)
		dims := orig.Shape().Dimensions
		check(name, mtValues(t, grads[i+1]), origVals, func(v []float64) *tensors.Tensor {
			if err := variable.SetValue(mtF32Tensor(v, dims...)); err != nil {
				t.Fatal(err)
			}
			return x
		})
		if err := variable.SetValue(mtF32Tensor(origVals, dims...)); err != nil {
			t.Fatal(err)
		}
	}
}

// mtF32Tensor builds a float32 tensor from float64 values.
func mtF32Tensor(v []float64, dims ...int) *tensors.Tensor {
	f := make([]float32, len(v))
	for i := range v {
		f[i] = float32(v[i])
	}
	return tensors.FromFlatDataAndDimensions(f, dims...)
}

// mtWeightedSum is Σ x ⊙ r for a fixed random r (seeded), a generic scalar loss.
func mtWeightedSum(x *Node, seed int64) *Node {
	rng := rand.New(rand.NewSource(seed))
	n := x.Shape().Size()
	r := make([]float32, n)
	for i := range r {
		r[i] = float32(rng.NormFloat64())
	}
	return ReduceAllSum(Mul(ConvertDType(x, dtypes.Float32), Const(x.Graph(), tensors.FromFlatDataAndDimensions(r, x.Shape().Dimensions...))))
}

func TestNorms(t *testing.T) {
	const d, eps = 6, 1e-5
	rng := rand.New(rand.NewSource(1))
	x, xv := mtRandom(rng, 2, 3, 4, d)
	for _, tc := range []struct {
		name string
		fn   func(ctx *context.Context, x *Node) *Node
		ref  func(row, w, b []float64) []float64
		vars []string
	}{
		{"rmsnorm", func(ctx *context.Context, x *Node) *Node { return RMSNorm(ctx.In("n"), x, eps) },
			func(row, w, _ []float64) []float64 {
				ms := 0.0
				for _, v := range row {
					ms += v * v / float64(len(row))
				}
				out := make([]float64, len(row))
				for i, v := range row {
					out[i] = v / math.Sqrt(ms+eps) * w[i]
				}
				return out
			}, []string{"weight"}},
		{"layernorm", func(ctx *context.Context, x *Node) *Node { return LayerNorm(ctx.In("n"), x, eps) },
			func(row, w, b []float64) []float64 {
				mean, vr := 0.0, 0.0
				for _, v := range row {
					mean += v / float64(len(row))
				}
				for _, v := range row {
					vr += (v - mean) * (v - mean) / float64(len(row))
				}
				out := make([]float64, len(row))
				for i, v := range row {
					out[i] = (v-mean)/math.Sqrt(vr+eps)*w[i] + b[i]
				}
				return out
			}, []string{"weight", "bias"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := mtCtx(3)
			// Non-trivial weights and biases.
			exec := context.MustNewExec(mtBackend(t), ctx, tc.fn)
			exec.MustExec(x)
			wv := make([]float64, d)
			bv := make([]float64, d)
			for i := range wv {
				wv[i] = 1 + 0.5*rng.NormFloat64()
				bv[i] = 0.5 * rng.NormFloat64()
			}
			for _, name := range tc.vars {
				vals := wv
				if name == "bias" {
					vals = bv
				}
				if err := ctx.InspectVariable("/n", name).SetValue(mtF32Tensor(vals, d)); err != nil {
					t.Fatal(err)
				}
			}
			got := mtValues(t, exec.MustExec(x)[0])
			var want []float64
			for r := 0; r < len(xv)/d; r++ {
				want = append(want, tc.ref(xv[r*d:(r+1)*d], wv, bv)...)
			}
			mtAssertClose(t, tc.name, got, want, 1e-6, 1e-5)
			mtGradCheck(t, ctx.Reuse(), x, "/n", tc.vars, func(ctx *context.Context, x *Node) (*Node, *Node) {
				return mtWeightedSum(tc.fn(ctx, x), 7), nil
			}, 1e-3, 1e-2, 11)
		})
	}
}
