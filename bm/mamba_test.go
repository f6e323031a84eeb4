package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// mambaTestConfig is a small mixer: d=8, D=16, N=4, K=4, R=3, init std 0.3, dt in [0.05, 1].
func mambaTestConfig() Config {
	c := MustPreset("tiny")
	c.Pattern = "r"
	c.Dim, c.StateSize, c.DtRank = 8, 4, 3
	// Larger weights and time steps than for training, so that the scan term dominates the
	// output rather than the D skip.
	c.InitStd, c.DtMin, c.DtMax = 0.3, 0.05, 1
	return c
}

// flat64 returns the values of a float32 tensor as float64.
func flat64(t *tensors.Tensor) []float64 { return checkFloats(t) }

// varValues returns the values of the variables of scope as float64, by name.
func varValues(ctx *context.Context, scope string, names ...string) map[string][]float64 {
	m := map[string][]float64{}
	for _, n := range names {
		v := ctx.InspectVariable(scope, n)
		if v == nil {
			panic(fmt.Sprintf("variable %s/%s not found", scope, n))
		}
		m[n] = flat64(v.MustValue())
	}
	return m
}

var mambaVarNames = []string{"in_proj", "conv1d_weight", "conv1d_bias", "x_proj", "dt_proj", "dt_proj_bias", "A_log", "D", "out_proj"}

func siluRef(x float64) float64     { return x / (1 + math.Exp(-x)) }
func softplusRef(x float64) float64 { return math.Log1p(math.Exp(x)) }

// mambaReference runs the mixer equations of SPEC.md §2 token by token in float64.
// u: flat [B, T, d]; weights as stored ([in, out] layouts). Returns flat [B, T, d].
func mambaReference(cfg Config, w map[string][]float64, u []float64, B, T int) []float64 {
	d, D, N, K, R := cfg.Dim, cfg.Inner(), cfg.StateSize, cfg.ConvKernel, cfg.Rank()
	E := R + 2*N
	out := make([]float64, B*T*d)
	for b := 0; b < B; b++ {
		xs := make([][]float64, T) // pre-conv x per time
		h := make([]float64, D*N)
		for t := 0; t < T; t++ {
			ut := u[(b*T+t)*d : (b*T+t+1)*d]
			xz := make([]float64, 2*D)
			for o := 0; o < 2*D; o++ {
				for i := 0; i < d; i++ {
					xz[o] += ut[i] * w["in_proj"][i*2*D+o]
				}
			}
			xs[t] = xz[:D]
			xc := make([]float64, D)
			for c := 0; c < D; c++ {
				s := w["conv1d_bias"][c]
				for k := 0; k < K; k++ {
					if tt := t - (K - 1) + k; tt >= 0 {
						s += w["conv1d_weight"][k*D+c] * xs[tt][c]
					}
				}
				xc[c] = siluRef(s)
			}
			xd := make([]float64, E)
			for e := 0; e < E; e++ {
				for c := 0; c < D; c++ {
					xd[e] += xc[c] * w["x_proj"][c*E+e]
				}
			}
			y := make([]float64, D)
			for c := 0; c < D; c++ {
				dl := w["dt_proj_bias"][c]
				for r := 0; r < R; r++ {
					dl += xd[r] * w["dt_proj"][r*D+c]
				}
				dl = softplusRef(dl)
				for n := 0; n < N; n++ {
					a := -math.Exp(w["A_log"][c*N+n])
					h[c*N+n] = math.Exp(dl*a)*h[c*N+n] + dl*xd[R+n]*xc[c]
					y[c] += h[c*N+n] * xd[R+N+n]
				}
				y[c] += w["D"][c] * xc[c]
				y[c] *= siluRef(xz[D+c])
			}
			for o := 0; o < d; o++ {
				s := 0.0
				for c := 0; c < D; c++ {
					s += y[c] * w["out_proj"][c*d+o]
				}
				out[(b*T+t)*d+o] = s
			}
		}
	}
	return out
}

// maxRelErr returns max|a−b| / max(max|b|, tiny).
func maxRelErr(a, b []float64) float64 {
	var num, den float64
	for i := range a {
		num = max(num, math.Abs(a[i]-b[i]))
		den = max(den, math.Abs(b[i]))
	}
	return num / max(den, 1e-30)
}

// TestMambaMatchesReference compares the parallel mixer with the float64 token-by-token
// equations, for several sequence lengths (shorter and longer than the conv kernel and than
// the scan chunk).
// Tolerance: 1e-5 relative to the largest output (float32 arithmetic).
func TestMambaMatchesReference(t *testing.T) {
	backend := cpuBackend(t)
	cfg := mambaTestConfig()
	for _, T := range []int{1, 3, 4, 9, 37} { // 37: five scan chunks of 8, the last partial
		t.Run(fmt.Sprintf("T=%d", T), func(t *testing.T) {
			ctx := context.New()
			ctx.SetParam(initializers.ParamInitialSeed, int64(7))
			rng := rand.New(rand.NewPCG(1, uint64(T)))
			u := RandomTensor(rng, 1, 2, T, cfg.Dim)
			got := context.MustExecOnce(backend, ctx, func(ctx *context.Context, u *Node) *Node {
				return Mamba(ctx.In("mixer"), cfg, u)
			}, u)
			w := varValues(ctx, "/mixer", mambaVarNames...)
			want := mambaReference(cfg, w, flat64(u), 2, T)
			if err := maxRelErr(flat64(got), want); err > 1e-5 {
				t.Errorf("Mamba vs reference: max relative error %.3g > 1e-5", err)
			}
		})
	}
}

// TestMambaScanMaxTokens checks that scanning the batch in pieces (Config.ScanMaxTokens)
// leaves the Mamba block's output unchanged: the sequences are independent (1e-6 relative).
func TestMambaScanMaxTokens(t *testing.T) {
	backend := cpuBackend(t)
	cfg := mambaTestConfig()
	const B, T = 3, 9
	rng := rand.New(rand.NewPCG(4, 4))
	u := RandomTensor(rng, 1, B, T, cfg.Dim)
	run := func(maxTokens int) []float64 {
		c := cfg
		c.ScanMaxTokens = maxTokens
		ctx := context.New()
		ctx.SetParam(initializers.ParamInitialSeed, int64(5))
		return flat64(context.MustExecOnce(backend, ctx, func(ctx *context.Context, u *Node) *Node {
			return Mamba(ctx.In("mixer"), c, u)
		}, u))
	}
	whole := run(0)
	for _, maxTokens := range []int{1, T, 2 * T} { // pieces of 1, 1 and 2 sequences
		if err := maxRelErr(run(maxTokens), whole); err > 1e-6 {
			t.Errorf("scan_max_tokens %d: max relative error %.3g against the unsplit scan", maxTokens, err)
		}
	}
	bad := cfg
	bad.ScanMaxTokens = -1
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "scan_max_tokens") {
		t.Errorf("scan_max_tokens -1: error %v, want one naming scan_max_tokens", err)
	}
}

// TestMambaPrefillStep checks the recurrent form against the parallel one: prefill P tokens,
// then step through the rest; every step's output must equal the parallel output at that
// position (1e-5 relative), including prompts shorter than the conv kernel, whose conv state
// must be zero on the left.
func TestMambaPrefillStep(t *testing.T) {
	backend := cpuBackend(t)
	cfg := mambaTestConfig()
	const B, T = 2, 7
	D, K := cfg.Inner(), cfg.ConvKernel
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(3))
	rng := rand.New(rand.NewPCG(2, 2))
	u := RandomTensor(rng, 1, B, T, cfg.Dim)
	full := flat64(context.MustExecOnce(backend, ctx, func(ctx *context.Context, u *Node) *Node {
		return Mamba(ctx.In("mixer"), cfg, u)
	}, u))
	uAll := flat64(u)
	prefill := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, u *Node) (out, conv, ssm *Node) {
		return MambaPrefill(ctx.In("mixer"), cfg, u)
	})
	step := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, u, conv, ssm *Node) (out, conv2, ssm2 *Node) {
		return MambaStep(ctx.In("mixer"), cfg, u, conv, ssm)
	})
	slice := func(t0, t1 int) *tensors.Tensor { // u[:, t0:t1, :]
		d := cfg.Dim
		v := make([]float32, 0, B*(t1-t0)*d)
		for b := 0; b < B; b++ {
			for t := t0; t < t1; t++ {
				for i := 0; i < d; i++ {
					v = append(v, float32(uAll[(b*T+t)*d+i]))
				}
			}
		}
		return tensors.FromFlatDataAndDimensions(v, B, t1-t0, d)
	}
	for _, P := range []int{1, 2, 3, 5} {
		res := prefill.MustExec(slice(0, P))
		out, conv, ssm := flat64(res[0]), res[1], res[2]
		var got, want []float64
		for b := 0; b < B; b++ {
			got = append(got, out[(b*P+P-1)*cfg.Dim:(b*P+P)*cfg.Dim]...)
			want = append(want, full[(b*T+P-1)*cfg.Dim:(b*T+P)*cfg.Dim]...)
		}
		if P < K { // conv state [B, D, K]: the first K−P slots are zero padding.
			cv := flat64(conv)
			for i, x := range cv {
				if k := i % K; k < K-P && x != 0 {
					t.Fatalf("P=%d: conv state slot %d (k=%d) = %g, want 0", P, i, k, x)
				}
			}
		}
		for tt := P; tt < T; tt++ {
			res := step.MustExec(tensors.FromFlatDataAndDimensions(tensors.MustCopyFlatData[float32](slice(tt, tt+1)), B, cfg.Dim), conv, ssm)
			o := flat64(res[0])
			conv, ssm = res[1], res[2]
			got = append(got, o...)
			for b := 0; b < B; b++ {
				want = append(want, full[(b*T+tt)*cfg.Dim:(b*T+tt+1)*cfg.Dim]...)
			}
		}
		_ = D
		if err := maxRelErr(got, want); err > 1e-5 {
			t.Errorf("prompt %d: recurrent vs parallel max relative error %.3g > 1e-5", P, err)
		}
	}
}

// TestMambaScanBackward checks that the config's scan_backward only changes how the scan's
// gradient is computed: the gradients of a Mamba block with respect to its input and its
// variables agree with the "fused" backward's to 1e-5 relative for the default ("", the fused
// one) and "stacked", and to 1e-4 for "twochain", whose sums over the sequence cancel (1.7e-5
// measured here for the dt bias, which sums dΔ; T = 37: several scan chunks, the last partial),
// and a bad value is rejected with an error naming the field.
func TestMambaScanBackward(t *testing.T) {
	backend := cpuBackend(t)
	const B, T = 2, 37
	rng := rand.New(rand.NewPCG(9, 9))
	base := mambaTestConfig()
	u := RandomTensor(rng, 1, B, T, base.Dim)
	w := RandomTensor(rng, 1, B, T, base.Dim)
	grads := func(scanBackward string) [][]float64 {
		cfg := base
		cfg.ScanBackward = scanBackward
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		ctx := context.New()
		ctx.SetParam(initializers.ParamInitialSeed, int64(6))
		out := context.MustNewExec(backend, ctx, func(ctx *context.Context, u, w *Node) []*Node {
			loss := ReduceAllSum(Mul(Mamba(ctx.In("m"), cfg, u), w))
			nodes := []*Node{u}
			for _, n := range mambaVarNames {
				nodes = append(nodes, ctx.InspectVariable("/m", n).ValueGraph(u.Graph()))
			}
			return Gradient(loss, nodes...)
		}).MustExec(u, w)
		res := make([][]float64, len(out))
		for i, o := range out {
			res[i] = flat64(o)
		}
		return res
	}
	want := grads(BackwardFused)
	for _, sb := range []string{"", BackwardTwoChain, BackwardStacked} {
		got := grads(sb)
		if len(got) != len(want) || len(got) < 2 {
			t.Fatalf("scan_backward %q: %d gradients, fused %d", sb, len(got), len(want))
		}
		for i := range got {
			name := "input u"
			if i > 0 {
				name = mambaVarNames[i-1]
			}
			err := maxRelErr(got[i], want[i])
			t.Logf("scan_backward %q: gradient of %s: %.2g relative to the fused backward's", sb, name, err)
			tol := 1e-5
			if sb == BackwardTwoChain {
				tol = 1e-4
			}
			if err > tol {
				t.Errorf("scan_backward %q: gradient of %s differs from the fused backward's by %.3g relative (> %g)", sb, name, err, tol)
			}
		}
	}
	bad := base
	bad.ScanBackward = "reverse"
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "scan_backward") {
		t.Errorf("scan_backward %q: error %v, want one naming scan_backward", bad.ScanBackward, err)
	}
}
