package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// scanInputs holds host-side inputs of a selective scan: x, dt [B][T][D], A [D][N],
// b, c [B][T][N].
type scanInputs struct {
	x, dt, b, c [][][]float64
	a           [][]float64
}

// newScanInputs draws inputs with the magnitudes of a trained Mamba layer: x, B, C ~ N(0, 1),
// Δ = softplus(N(−2, 1)) clipped to [0.001, 0.5], A[d, n] = −(n+1)·exp(0.1·N(0, 1)).
func newScanInputs(rng *rand.Rand, batch, T, D, N int) scanInputs {
	gen := func(k int, f func() float64) [][][]float64 {
		v := make([][][]float64, batch)
		for b := range v {
			v[b] = make([][]float64, T)
			for t := range v[b] {
				v[b][t] = make([]float64, k)
				for i := range v[b][t] {
					v[b][t][i] = f()
				}
			}
		}
		return v
	}
	in := scanInputs{
		x: gen(D, rng.NormFloat64),
		dt: gen(D, func() float64 {
			z := rng.NormFloat64() - 2
			return min(0.5, max(0.001, math.Log1p(math.Exp(z))))
		}),
		b: gen(N, rng.NormFloat64),
		c: gen(N, rng.NormFloat64),
	}
	in.a = make([][]float64, D)
	for d := range in.a {
		in.a[d] = make([]float64, N)
		for n := range in.a[d] {
			in.a[d][n] = -float64(n+1) * math.Exp(0.1*rng.NormFloat64())
		}
	}
	return in
}

func flat3(v [][][]float64) (data []float32, dims []int) {
	dims = []int{len(v), len(v[0]), len(v[0][0])}
	for _, a := range v {
		for _, b := range a {
			for _, c := range b {
				data = append(data, float32(c))
			}
		}
	}
	return
}

func tensor3(v [][][]float64) *tensors.Tensor {
	data, dims := flat3(v)
	return tensors.FromFlatDataAndDimensions(data, dims...)
}

func tensor2(v [][]float64) *tensors.Tensor {
	data, _ := flat3([][][]float64{v})
	return tensors.FromFlatDataAndDimensions(data, len(v), len(v[0]))
}

func (in scanInputs) tensors() []any {
	return []any{tensor3(in.x), tensor3(in.dt), tensor2(in.a), tensor3(in.b), tensor3(in.c)}
}

func flatten3(v [][][]float64) []float64 {
	var out []float64
	for _, a := range v {
		for _, b := range a {
			out = append(out, b...)
		}
	}
	return out
}

func TestSelectiveScanForward(t *testing.T) {
	backend := cpuBackend(t)
	cases := []struct {
		B, T, D, N int
		opts       ScanOptions
	}{
		{2, 1, 3, 4, ScanOptions{Method: ScanSequential}},
		{2, 9, 3, 4, ScanOptions{Method: ScanSequential}},
		{2, 1, 3, 4, ScanOptions{Chunk: 4}},
		{2, 2, 3, 4, ScanOptions{Chunk: 4}},
		{2, 2, 3, 4, ScanOptions{Chunk: 1}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Output: OutputRecompute}},
		{1, 64, 5, 16, ScanOptions{Chunk: 8}},
		{2, 70, 3, 4, ScanOptions{Chunk: 4}},                           // 18 chunks: blocked (padded to 20)
		{2, 70, 3, 4, ScanOptions{Chunk: 4, Across: AcrossLogDepth}},   // 18 chunks
		{2, 70, 3, 4, ScanOptions{Chunk: 4, Across: AcrossSequential}}, // 18 chunks
		{2, 200, 4, 8, ScanOptions{Chunk: 2, Across: AcrossBlocked}},   // 100 chunks: 10 blocks of 10
		{2, 300, 4, 16, ScanOptions{}},                                 // default L=8: 38 chunks, blocked
		{2, 300, 4, 16, ScanOptions{Chunk: 16}},                        // 19 chunks
		{3, 13, 3, 4, ScanOptions{Chunk: 4, MaxBatch: 2}},              // batch in pieces of 2 and 1
		{2, 300, 4, 16, ScanOptions{Chunk: 32, Output: OutputRecompute, Across: AcrossLogDepth}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Link: LinkCached, Backward: BackwardTwoChain}},
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range cases {
		name := fmt.Sprintf("B%d_T%d_D%d_N%d_%s", tc.B, tc.T, tc.D, tc.N, tc.opts)
		t.Run(name, func(t *testing.T) {
			in := newScanInputs(rng, tc.B, tc.T, tc.D, tc.N)
			wantY, wantH := SelectiveScanReference(in.x, in.dt, in.a, in.b, in.c)
			exec := MustNewExec(backend, func(x, dt, a, b, c *Node) []*Node {
				y, h := SelectiveScan(x, dt, a, b, c, tc.opts)
				return []*Node{y, h}
			})
			out := exec.MustExec(in.tensors()...)
			errY := relErrFlat(tensors.MustCopyFlatData[float32](out[0]), flatten3(wantY))
			errH := relErrFlat(tensors.MustCopyFlatData[float32](out[1]), flatten3(wantH))
			t.Logf("relative error vs float64 reference: y %.2g, hT %.2g", errY, errH)
			// float32 arithmetic over at most a few hundred steps: errors of a few 1e-7.
			if errY > 1e-5 || errH > 1e-5 {
				t.Errorf("relative error vs float64 reference: y %.3g, hT %.3g (tolerance 1e-5)", errY, errH)
			}
		})
	}
}

// scanGradExec builds a graph returning the gradients of L = Σ wy⊙y + Σ wh⊙hT with respect to
// x, delta, A, Bm, Cm (in this order).
func scanGradExec(backend backends.Backend, opts ScanOptions) *Exec {
	return MustNewExec(backend, func(in []*Node) []*Node {
		y, h := SelectiveScan(in[0], in[1], in[2], in[3], in[4], opts)
		loss := Add(ReduceAllSum(Mul(y, in[5])), ReduceAllSum(Mul(h, in[6])))
		return Gradient(loss, in[0], in[1], in[2], in[3], in[4])
	})
}

// randomWeights returns the projection weights wy [B, T, D] and wh [B, D, N] of the test loss.
func randomWeights(rng *rand.Rand, batch, T, D, N int) (wy, wh [][][]float64) {
	return randomHost3(rng, batch, T, D), randomHost3(rng, batch, D, N)
}

// refLoss is the test loss computed with the float64 reference scan.
func refLoss(in scanInputs, wy, wh [][][]float64) float64 {
	y, h := SelectiveScanReference(in.x, in.dt, in.a, in.b, in.c)
	sum := 0.0
	for i, v := range flatten3(y) {
		sum += v * flatten3(wy)[i]
	}
	for i, v := range flatten3(h) {
		sum += v * flatten3(wh)[i]
	}
	return sum
}

func TestSelectiveScanGradient(t *testing.T) {
	backend := cpuBackend(t)
	cases := []struct {
		B, T, D, N int
		opts       ScanOptions
	}{
		{2, 1, 3, 4, ScanOptions{Chunk: 4}},
		{2, 2, 3, 4, ScanOptions{Chunk: 4}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Output: OutputRecompute}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Autodiff: true}},
		{1, 24, 3, 16, ScanOptions{Chunk: 8}},
		{2, 45, 3, 4, ScanOptions{Chunk: 2}},                            // 23 chunks: blocked, padded
		{2, 45, 3, 4, ScanOptions{Chunk: 2, Across: AcrossLogDepth}},    // 23 chunks
		{2, 45, 3, 4, ScanOptions{Chunk: 2, Across: AcrossSequential}},  // 23 chunks
		{1, 40, 2, 4, ScanOptions{Chunk: 16, Across: AcrossSequential}}, // 3 chunks, padded
		{2, 3, 3, 4, ScanOptions{Chunk: 4, Backward: BackwardTwoChain}}, // one padded chunk
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Backward: BackwardTwoChain}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Backward: BackwardStacked}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Link: LinkConcat}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Backward: BackwardTwoChain, Link: LinkConcat}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Backward: BackwardStacked, Link: LinkConcat, Output: OutputRecompute}},
		{2, 13, 3, 4, ScanOptions{Chunk: 4, Backward: BackwardStacked, Link: LinkCached, Output: OutputRecompute}},
		{1, 24, 3, 16, ScanOptions{Chunk: 8, Backward: BackwardTwoChain, Link: LinkCached}},
		{2, 45, 3, 4, ScanOptions{Chunk: 2, Backward: BackwardTwoChain}},                           // 23 chunks: blocked, padded
		{2, 45, 3, 4, ScanOptions{Chunk: 2, Backward: BackwardStacked, Across: AcrossLogDepth}},    // 23 chunks
		{2, 40, 3, 4, ScanOptions{Chunk: 4, BackwardChunk: 8, Backward: BackwardTwoChain}},         // 10 chunks, 5 backward chunks
		{2, 40, 3, 4, ScanOptions{Chunk: 4, BackwardChunk: 20, Backward: BackwardStacked}},         // 10 chunks, 2 backward chunks
		{2, 40, 3, 4, ScanOptions{Chunk: 4, BackwardChunk: 12, Backward: BackwardTwoChain}},        // 10 chunks: not divisible, uses 4
		{1, 40, 2, 4, ScanOptions{Chunk: 16, Backward: BackwardStacked, Across: AcrossSequential}}, // 3 chunks, padded
		{3, 13, 3, 4, ScanOptions{Chunk: 4, MaxBatch: 2}},                                          // batch in pieces of 2 and 1
		{3, 13, 3, 4, ScanOptions{Chunk: 4, MaxBatch: 1, Link: LinkConcat}},
	}
	rng := rand.New(rand.NewPCG(5, 6))
	names := []string{"x", "delta", "A", "Bm", "Cm"}
	for _, tc := range cases {
		name := fmt.Sprintf("B%d_T%d_D%d_N%d_%s", tc.B, tc.T, tc.D, tc.N, tc.opts)
		t.Run(name, func(t *testing.T) {
			in := newScanInputs(rng, tc.B, tc.T, tc.D, tc.N)
			wy, wh := randomWeights(rng, tc.B, tc.T, tc.D, tc.N)
			args := append(in.tensors(), tensor3(wy), tensor3(wh))
			got := scanGradExec(backend, tc.opts).MustExec(args...)
			want := scanGradExec(backend, ScanOptions{Method: ScanSequential}).MustExec(args...)

			// (a) Against automatic differentiation of the unrolled sequential graph (float32).
			for i := range names {
				g := tensors.MustCopyFlatData[float32](got[i])
				w := tensors.MustCopyFlatData[float32](want[i])
				w64 := make([]float64, len(w))
				for j, v := range w {
					w64[j] = float64(v)
				}
				e := relErrFlat(g, w64)
				t.Logf("gradient of %s: relative error vs sequential autodiff %.2g", names[i], e)
				if e > 1e-5 {
					t.Errorf("gradient of %s: relative error vs sequential autodiff %.3g > 1e-5", names[i], e)
				}
			}

			// (b) Against central differences of the float64 reference on a few coordinates.
			const eps = 1e-6
			grads := make([][]float32, len(names))
			for i := range names {
				grads[i] = tensors.MustCopyFlatData[float32](got[i])
			}
			coords := func(k int) []*float64 {
				switch k {
				case 0:
					return ptrs3(in.x)
				case 1:
					return ptrs3(in.dt)
				case 2:
					var p []*float64
					for d := range in.a {
						for n := range in.a[d] {
							p = append(p, &in.a[d][n])
						}
					}
					return p
				case 3:
					return ptrs3(in.b)
				}
				return ptrs3(in.c)
			}
			maxFD := 0.0
			defer func() { t.Logf("max |gradient − central difference| / scale = %.2g", maxFD) }()
			for k := range names {
				ps := coords(k)
				scale := 0.0
				for _, v := range grads[k] {
					scale = max(scale, math.Abs(float64(v)))
				}
				for trial := 0; trial < 3; trial++ {
					j := rng.IntN(len(ps))
					orig := *ps[j]
					*ps[j] = orig + eps
					fp := refLoss(in, wy, wh)
					*ps[j] = orig - eps
					fm := refLoss(in, wy, wh)
					*ps[j] = orig
					fd := (fp - fm) / (2 * eps)
					// float32 gradients vs float64 differences (truncation error ~1e-10):
					// agreement to 1e-4 of the gradient's largest entry.
					e := math.Abs(fd - float64(grads[k][j]))
					maxFD = max(maxFD, e/max(scale, 1e-3))
					if e > 1e-4*max(scale, 1e-3) {
						t.Errorf("gradient of %s[%d] = %.7g, central difference %.7g (|diff| %.3g, scale %.3g)",
							names[k], j, grads[k][j], fd, e, scale)
					}
				}
			}
		})
	}
}

func ptrs3(v [][][]float64) []*float64 {
	var p []*float64
	for a := range v {
		for b := range v[a] {
			for c := range v[a][b] {
				p = append(p, &v[a][b][c])
			}
		}
	}
	return p
}

// TestCheckScan runs the self-check used on accelerators, here on the CPU backend.
func TestCheckScan(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every benchmark variant")
	}
	if err := CheckScan(cpuBackend(t)); err != nil {
		t.Error(err)
	}
}

// BenchmarkSelectiveScan times forward and forward+backward passes on the CPU backend at a
// small shape (B=2, T=256, D=64, N=16); run with -bench SelectiveScan -benchtime 5x.
func BenchmarkSelectiveScan(b *testing.B) {
	backend := cpuBackend(b)
	shape := ScanShape{B: 2, T: 256, D: 64, N: 16}
	variants := []ScanOptions{{}, {Chunk: 32}, {Chunk: 16, Across: AcrossLogDepth}, {Chunk: 16, Output: OutputRecompute},
		{Chunk: 16, Autodiff: true}, {Method: ScanSequential}, {Link: LinkConcat},
		{Backward: BackwardTwoChain, Link: LinkCached}, {Backward: BackwardStacked, Link: LinkCached}}
	inputs := randomScanInputsExec(backend, shape, 1).MustExec()
	for _, opts := range variants {
		fwd := MustNewExec(backend, func(in []*Node) []*Node {
			y, h := SelectiveScan(in[0], in[1], in[2], in[3], in[4], opts)
			return []*Node{y, h, Add(ReduceAllSum(y), ReduceAllSum(h))}
		})
		bwd := MustNewExec(backend, func(in []*Node) []*Node {
			y, h := SelectiveScan(in[0], in[1], in[2], in[3], in[4], opts)
			loss := Add(ReduceAllSum(Mul(y, in[5])), ReduceAllSum(Mul(h, in[6])))
			grads := Gradient(loss, in[0], in[1], in[2], in[3], in[4])
			return append(grads, ReduceAllSum(grads[0]))
		})
		for _, bc := range []struct {
			name string
			e    *Exec
			args []*tensors.Tensor
		}{{"fwd", fwd, inputs[:5]}, {"fwd+bwd", bwd, inputs}} {
			b.Run(opts.String()+"/"+bc.name, func(b *testing.B) {
				if _, _, _, err := timeExec(bc.e, bc.args, 1, ""); err != nil { // compile and warm up
					b.Fatal(err)
				}
				args := make([]any, len(bc.args))
				for i, t := range bc.args {
					args[i] = t
				}
				b.ResetTimer()
				for b.Loop() {
					outs := bc.e.MustExec(args...)
					_ = tensors.ToScalar[float32](outs[len(outs)-1])
				}
			})
		}
	}
}

// TestSelectiveScanCachedLinkRepeatedGradient takes two gradients in one graph, of a loss on y
// only and of a loss on hT only, and checks that LinkCached gives the gradients of LinkConcat
// (the cached cotangents of one differentiation must not leak into the next).
func TestSelectiveScanCachedLinkRepeatedGradient(t *testing.T) {
	backend := cpuBackend(t)
	rng := rand.New(rand.NewPCG(9, 10))
	const batch, T, D, N = 2, 21, 3, 4
	in := newScanInputs(rng, batch, T, D, N)
	wy, wh := randomWeights(rng, batch, T, D, N)
	args := append(in.tensors(), tensor3(wy), tensor3(wh))
	for _, bwd := range []string{BackwardFused, BackwardTwoChain} {
		build := func(opts ScanOptions) *Exec {
			return MustNewExec(backend, func(in []*Node) []*Node {
				y, h := SelectiveScan(in[0], in[1], in[2], in[3], in[4], opts)
				gy := Gradient(ReduceAllSum(Mul(y, in[5])), in[0], in[1], in[2], in[3], in[4])
				gh := Gradient(ReduceAllSum(Mul(h, in[6])), in[0], in[1], in[2], in[3], in[4])
				return append(gy, gh...)
			})
		}
		opts := ScanOptions{Chunk: 4, Backward: bwd, Link: LinkConcat}
		want := build(opts).MustExec(args...)
		opts.Link = LinkCached
		got := build(opts).MustExec(args...)
		for i := range got {
			w := tensors.MustCopyFlatData[float32](want[i])
			w64 := make([]float64, len(w))
			for j, v := range w {
				w64[j] = float64(v)
			}
			g := tensors.MustCopyFlatData[float32](got[i])
			e := relErrFlat(g, w64)
			if math.IsNaN(e) { // the gradient is exactly zero (dC of a loss on hT only): compare absolutely
				e = 0
				for _, v := range g {
					e = max(e, math.Abs(float64(v)))
				}
			}
			if !(e <= 1e-6) {
				t.Errorf("%s: gradient %d of loss %d: error %.3g vs LinkConcat (tolerance 1e-6)", opts, i%5, i/5, e)
			}
		}
	}
}

func TestScanOptionsValidate(t *testing.T) {
	cases := []struct {
		opts ScanOptions
		want string // substring of the error, "" for valid options
	}{
		{ScanOptions{}, ""},
		{ScanOptions{Backward: BackwardStacked, BackwardChunk: 32, Link: LinkCached}, ""},
		{ScanOptions{Backward: "bogus"}, "ScanOptions.Backward"},
		{ScanOptions{Chunk: 16, Backward: BackwardTwoChain, BackwardChunk: 24}, "ScanOptions.BackwardChunk"},
		{ScanOptions{Link: "bogus"}, "ScanOptions.Link"},
		{ScanOptions{Across: "bogus"}, "ScanOptions.Across"},
		{ScanOptions{MaxBatch: -1}, "ScanOptions.MaxBatch"},
	}
	for _, tc := range cases {
		err := tc.opts.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", tc.opts, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want one naming %s", tc.opts, err, tc.want)
		}
	}
}

// referenceScanGradients returns the five gradients of L = Σ wy⊙y + Σ wh⊙hT in float64 (flat,
// in the layouts of x, delta, A, Bm, Cm), by the adjoint recurrence of the header of scan.go.
func referenceScanGradients(in scanInputs, wy, wh [][][]float64) [5][]float64 {
	batch, T, D, N := len(in.x), len(in.x[0]), len(in.a), len(in.a[0])
	var out [5][]float64
	out[0], out[1] = make([]float64, batch*T*D), make([]float64, batch*T*D)
	out[2] = make([]float64, D*N)
	out[3], out[4] = make([]float64, batch*T*N), make([]float64, batch*T*N)
	for b := range batch {
		hs := make([][]float64, T+1) // hs[t+1] = h_t, hs[0] = 0
		hs[0] = make([]float64, D*N)
		for t := range T {
			hs[t+1] = make([]float64, D*N)
			for d := range D {
				for n := range N {
					hs[t+1][d*N+n] = math.Exp(in.dt[b][t][d]*in.a[d][n])*hs[t][d*N+n] + in.dt[b][t][d]*in.x[b][t][d]*in.b[b][t][n]
				}
			}
		}
		g := make([]float64, D*N)
		for d := range D {
			copy(g[d*N:(d+1)*N], wh[b][d])
		}
		for t := T - 1; t >= 0; t-- {
			for d := range D {
				dt, x := in.dt[b][t][d], in.x[b][t][d]
				for n := range N {
					k := d*N + n
					if t < T-1 {
						g[k] *= math.Exp(in.dt[b][t+1][d] * in.a[d][n])
					}
					g[k] += wy[b][t][d] * in.c[b][t][n]
					e := g[k] * math.Exp(dt*in.a[d][n]) * hs[t][k]
					gB := g[k] * in.b[b][t][n]
					out[0][(b*T+t)*D+d] += dt * gB
					out[1][(b*T+t)*D+d] += x*gB + in.a[d][n]*e
					out[2][k] += dt * e
					out[3][(b*T+t)*N+n] += g[k] * dt * x
					out[4][(b*T+t)*N+n] += wy[b][t][d] * hs[t+1][k]
				}
			}
		}
	}
	return out
}

// TestSelectiveScanGradientLongSequence checks the backward variants against float64 gradients
// on a long sequence (T = 4096), where float32 rounding accumulates. The fused and stacked
// backward passes compute the decay term e_t locally; the two-chain backward sums it over the
// sequence and is allowed larger errors in dΔ and dA (see decoupledBackward).
func TestSelectiveScanGradientLongSequence(t *testing.T) {
	if testing.Short() {
		t.Skip("long sequence")
	}
	backend := cpuBackend(t)
	rng := rand.New(rand.NewPCG(11, 12))
	const batch, T, D, N = 1, 4096, 4, 16
	in := newScanInputs(rng, batch, T, D, N)
	wy, wh := randomWeights(rng, batch, T, D, N)
	args := append(in.tensors(), tensor3(wy), tensor3(wh))
	want := referenceScanGradients(in, wy, wh)
	names := []string{"x", "delta", "A", "Bm", "Cm"}
	cases := []struct {
		opts ScanOptions
		tol  [5]float64
	}{
		{ScanOptions{Backward: BackwardFused}, [5]float64{1e-5, 1e-5, 1e-5, 1e-5, 1e-5}},
		{ScanOptions{Backward: BackwardStacked, Link: LinkCached}, [5]float64{1e-5, 1e-5, 1e-5, 1e-5, 1e-5}},
		{ScanOptions{Backward: BackwardTwoChain}, [5]float64{1e-5, 5e-5, 1e-3, 1e-5, 1e-5}},
		{ScanOptions{Backward: BackwardTwoChain, BackwardChunk: 64}, [5]float64{1e-5, 5e-5, 1e-3, 1e-5, 1e-5}},
	}
	for _, tc := range cases {
		got := scanGradExec(backend, tc.opts).MustExec(args...)
		for i, name := range names {
			e := relErrFlat(tensors.MustCopyFlatData[float32](got[i]), want[i])
			t.Logf("%s: gradient of %s: relative error vs float64 %.2g", tc.opts, name, e)
			if !(e <= tc.tol[i]) {
				t.Errorf("%s: gradient of %s: relative error vs float64 %.3g > %g", tc.opts, name, e, tc.tol[i])
			}
		}
	}
}

// TestParseScanOptions checks that ParseScanOptions reads back what ScanOptions.String prints,
// for every benchmarked variant and a few more, and names the bad part of a wrong name.
func TestParseScanOptions(t *testing.T) {
	opts := append(ScanBenchVariants(),
		ScanOptions{Output: OutputRecompute},
		ScanOptions{MaxBatch: 2, Backward: BackwardStacked, BackwardChunk: 32},
		ScanOptions{Method: ScanSequential})
	for _, o := range opts {
		got, err := ParseScanOptions(o.String())
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		// The link does not apply to automatic differentiation, and String leaves it out there.
		if got.String() != o.String() || (!o.Autodiff && got.withDefaults() != o.withDefaults()) {
			t.Errorf("%s: parsed back as %s (%+v)", o, got, got)
		}
	}
	if got, err := ParseScanOptions("default"); err != nil || got.String() != (ScanOptions{}).String() {
		t.Errorf("default: %v, %v", got, err)
	}
	for name, want := range map[string]string{
		"chunked/L16/auto":                                     "too few parts",
		"chunked/16/auto/correction":                           "L followed by",
		"chunked/Lx/auto/correction":                           "not a number",
		"chunked/L16/auto/correction/fast":                     "unknown part fast",
		"chunked/L16/sideways/correction/cached":               "unknown across-chunk scan",
		"chunked/L16/auto/correction/bwd-magic":                "unknown backward variant",
		"chunked/L16/auto/correction/bwd-twochain/bL24/cached": "multiple of Chunk",
	} {
		if _, err := ParseScanOptions(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, want)
		}
	}
}
