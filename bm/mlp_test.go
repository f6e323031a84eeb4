package bm

import (
	"math/rand"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// TestMLP checks the dense gated MLP against a float64 reference (silu and gelu, float32 and
// bfloat16 compute) and its gradients against finite differences.
func TestMLP(t *testing.T) {
	for _, tc := range []struct {
		act, dtype string
		tol        float64 // relative to the largest output
	}{
		{"silu", "float32", 1e-5},
		{"gelu", "float32", 1e-5},
		{"silu", "bfloat16", 5e-2},
	} {
		t.Run(tc.act+"/"+tc.dtype, func(t *testing.T) {
			cfg := mtConfig()
			cfg.Activation, cfg.ComputeDType = tc.act, tc.dtype
			rng := rand.New(rand.NewSource(5))
			x, xv := mtRandom(rng, 1, 2, 5, cfg.Dim)
			ctx := mtCtx(9)
			fn := func(ctx *context.Context, x *Node) *Node { return MLP(ctx.In("mlp"), cfg, x) }
			got := mtValues(t, context.MustNewExec(mtBackend(t), ctx, fn).MustExec(x)[0])
			fc1, fc2 := mtVar(t, ctx, "/mlp", "fc1"), mtVar(t, ctx, "/mlp", "fc2")
			var want []float64
			for r := 0; r < len(xv)/cfg.Dim; r++ {
				want = append(want, mtGatedMLPRef(cfg, xv[r*cfg.Dim:(r+1)*cfg.Dim], fc1, fc2)...)
			}
			mtAssertClose(t, "MLP vs reference", got, want, 0, tc.tol)
			if tc.dtype == "float32" {
				mtGradCheck(t, ctx.Reuse(), x, "/mlp", []string{"fc1", "fc2"}, func(ctx *context.Context, x *Node) (*Node, *Node) {
					return mtWeightedSum(fn(ctx, x), 3), nil
				}, 1e-3, 1e-2, 4)
			}
		})
	}
}
