package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// TestDotGeneralGradient checks the package's DotGeneral gradient against GoMLX's own rule
// (broadcast and reduce, exact in float64) and against central differences, for plain and
// batched matmuls, the tied-head shape, axes in scrambled orders, two contracted axes paired out
// of order, and an outer product. Tolerance 1e-10 relative between the two rules (float64),
// 1e-6 against the differences.
func TestDotGeneralGradient(t *testing.T) {
	backend := cpuBackend(t)
	cases := []struct {
		name     string
		lhs, rhs []int
		lc, lb   []int
		rc, rb   []int
	}{
		{"matmul", []int{3, 4}, []int{4, 5}, []int{1}, nil, []int{0}, nil},
		{"head", []int{2, 3, 4}, []int{5, 4}, []int{2}, nil, []int{1}, nil},
		{"batched", []int{2, 3, 4}, []int{2, 4, 5}, []int{2}, []int{0}, []int{1}, []int{0}},
		{"scrambled", []int{4, 2, 3}, []int{3, 5, 4}, []int{0}, []int{2}, []int{2}, []int{0}},
		{"two contracted", []int{2, 3, 4, 5}, []int{5, 2, 6, 3}, []int{1, 3}, []int{0}, []int{3, 0}, []int{1}},
		{"outer", []int{3}, []int{4}, nil, nil, nil, nil},
	}
	{ // The package's rule must be the one in use: it can read the axes of a DotGeneral node.
		g := NewGraph(backend, "axes")
		l := Parameter(g, "l", shapes.Make(dtypes.Float32, 4, 2, 3))
		r := Parameter(g, "r", shapes.Make(dtypes.Float32, 3, 5, 4))
		a, ok := dotGeneralAxesOf(DotGeneral(l, []int{0}, []int{2}, r, []int{2}, []int{0}))
		if got := fmt.Sprint(a); !ok || got != "{[0] [2] [2] [0]}" {
			t.Fatalf("axes of a DotGeneral node: %s (ok %v), want {[0] [2] [2] [0]}", got, ok)
		}
	}
	rng := rand.New(rand.NewPCG(5, 8))
	randT := func(dims []int) *tensors.Tensor {
		n := 1
		for _, d := range dims {
			n *= d
		}
		v := make([]float64, n)
		for i := range v {
			v[i] = rng.NormFloat64()
		}
		return tensors.FromFlatDataAndDimensions(v, dims...)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lhs, rhs := randT(tc.lhs), randT(tc.rhs)
			var outDims []int
			{ // the output's shape, to draw the cotangent weights
				e := MustNewExec(backend, func(l, r *Node) *Node { return DotGeneral(l, tc.lc, tc.lb, r, tc.rc, tc.rb) })
				out := e.MustExec(lhs, rhs)[0]
				outDims = out.Shape().Dimensions
			}
			w := randT(outDims)
			lossOf := func(l, r, w *Node) *Node {
				return ReduceAllSum(Mul(DotGeneral(l, tc.lc, tc.lb, r, tc.rc, tc.rb), w))
			}
			grads := func() (gl, gr []float64) {
				e := MustNewExec(backend, func(l, r, w *Node) []*Node {
					return Gradient(lossOf(l, r, w), l, r)
				})
				outs := e.MustExec(lhs, rhs, w)
				return checkFloats(outs[0]), checkFloats(outs[1])
			}
			gl, gr := grads()
			ours := VJPRegistration[NodeTypeDotGeneral]
			VJPRegistration[NodeTypeDotGeneral] = gomlxDotGeneralVJP
			rl, rr := grads()
			VJPRegistration[NodeTypeDotGeneral] = ours
			for _, p := range []struct {
				name      string
				got, want []float64
			}{{"lhs", gl, rl}, {"rhs", gr, rr}} {
				if len(p.got) != len(p.want) {
					t.Fatalf("gradient of %s has %d values, GoMLX's rule %d", p.name, len(p.got), len(p.want))
				}
				for i := range p.got {
					if math.Abs(p.got[i]-p.want[i]) > 1e-10*(1+math.Abs(p.want[i])) {
						t.Fatalf("gradient of %s[%d] = %v, GoMLX's rule %v", p.name, i, p.got[i], p.want[i])
					}
				}
			}
			// Central differences on a few entries of each operand.
			loss := MustNewExec(backend, func(l, r, w *Node) *Node { return lossOf(l, r, w) })
			eval := func(l, r *tensors.Tensor) float64 {
				return tensors.ToScalar[float64](loss.MustExec(l, r, w)[0])
			}
			for which, base := range []*tensors.Tensor{lhs, rhs} {
				flat := checkFloats(base)
				for _, i := range []int{0, len(flat) / 2, len(flat) - 1} {
					const h = 1e-5
					bump := func(d float64) *tensors.Tensor {
						c := append([]float64(nil), flat...)
						c[i] += d
						return tensors.FromFlatDataAndDimensions(c, base.Shape().Dimensions...)
					}
					var fd float64
					if which == 0 {
						fd = (eval(bump(h), rhs) - eval(bump(-h), rhs)) / (2 * h)
					} else {
						fd = (eval(lhs, bump(h)) - eval(lhs, bump(-h))) / (2 * h)
					}
					got := gl
					if which == 1 {
						got = gr
					}
					if math.Abs(got[i]-fd) > 1e-6*(1+math.Abs(fd)) {
						t.Errorf("operand %d entry %d: gradient %v, central difference %v", which, i, got[i], fd)
					}
				}
			}
		})
	}
}

// TestDotGeneralGradientDType checks that a bfloat16 matmul's gradients come out in bfloat16
// with the operands' shapes.
func TestDotGeneralGradientDType(t *testing.T) {
	backend := cpuBackend(t)
	e := MustNewExec(backend, func(l, r *Node) []*Node {
		lb, rb := ConvertDType(l, dtypes.BFloat16), ConvertDType(r, dtypes.BFloat16)
		loss := ReduceAllSum(ConvertDType(Einsum("btd,vd->btv", lb, rb), dtypes.Float32))
		return Gradient(loss, lb, rb)
	})
	outs := e.MustExec(tensors.FromFlatDataAndDimensions(make([]float32, 2*3*4), 2, 3, 4),
		tensors.FromFlatDataAndDimensions(make([]float32, 5*4), 5, 4))
	if got := fmt.Sprint(outs[0].Shape(), outs[1].Shape()); got != "(BFloat16)[2 3 4] (BFloat16)[5 4]" {
		t.Errorf("gradient shapes %s, want (BFloat16)[2 3 4] (BFloat16)[5 4]", got)
	}
}
