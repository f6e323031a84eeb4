package bench

import (
	"fmt"
	"math/rand/v2"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
)

// MoE times one MoE block (E experts, top-1, dropless dispatch) against a dense gated MLP
// block of the same active size (hidden F, i.e. one expert's worth of weights) on the same
// tokens [tokens, d], forward and forward+backward (gradients of the input and of every
// weight). Besides the blocked dispatch it times the per-token weight gather (dispatch block
// 1) and the "run all experts and mask" computation (bm.MoEDense). The MoE rows carry the
// ratio to the dense row of the same pass in Extra["x_dense"] and the expert-matmul FLOPs they
// actually run per call, padding rows included, in Extra["expert_flops"].
func MoE(backend backends.Backend, cfg bm.Config, experts, tokens, reps int) []Row {
	rng := rand.New(rand.NewPCG(7, uint64(tokens)))
	u := make([]float32, tokens*cfg.Dim)
	w := make([]float32, tokens*cfg.Dim)
	for i := range u {
		u[i] = float32(rng.NormFloat64())
		w[i] = float32(rng.NormFloat64())
	}
	uT := tensors.FromFlatDataAndDimensions(u, tokens, cfg.Dim)
	wT := tensors.FromFlatDataAndDimensions(w, tokens, cfg.Dim)
	shape := fmt.Sprintf("tokens=%d d=%d F=%d E=%d %s", tokens, cfg.Dim, cfg.FFN, experts, cfg.ComputeDType)
	fwdFLOPs := 2 * 3 * float64(cfg.Dim) * float64(cfg.FFN) * float64(tokens) // one expert per token

	type variant struct {
		name        string
		dispatch    int     // bm.ParamMoEBlock (0: automatic)
		expertFLOPs float64 // forward expert-matmul FLOPs actually run
		block       func(ctx *context.Context, u *Node) *Node
	}
	perRow := 2 * 3 * float64(cfg.Dim) * float64(cfg.FFN)
	blocked := perRow * float64(bm.MoEDispatchRows(tokens, experts, bm.MoEBlockSize(tokens, experts)))
	moe := func(route string) func(ctx *context.Context, u *Node) *Node {
		return func(ctx *context.Context, u *Node) *Node {
			out, _, _ := bm.MoE(ctx, cfg, experts, u, route)
			return out
		}
	}
	variants := []variant{
		{"dense MLP (F)", 0, fwdFLOPs, func(ctx *context.Context, u *Node) *Node { return bm.MLP(ctx, cfg, u) }},
		{"MoE argmax", 0, blocked, moe(bm.RoutingArgmax)},
		{"MoE sinkhorn", 0, blocked, moe(bm.RoutingSinkhorn)},
		{"MoE argmax, per-token gather", 1, fwdFLOPs, moe(bm.RoutingArgmax)},
	}
	// Larger dispatch blocks than the automatic size: fewer per-block copies of the expert
	// weights (each block's fc1 and fc2 are materialised for the batched matmul), more padding
	// rows.
	for _, b := range []int{2 * bm.MoEBlockSize(tokens, experts), 4 * bm.MoEBlockSize(tokens, experts)} {
		if b > tokens {
			continue
		}
		variants = append(variants, variant{fmt.Sprintf("MoE argmax, block %d", b), b,
			perRow * float64(bm.MoEDispatchRows(tokens, experts, b)), moe(bm.RoutingArgmax)})
	}
	variants = append(variants, []variant{
		{"MoE argmax, all experts masked", 0, float64(experts) * fwdFLOPs, func(ctx *context.Context, u *Node) *Node {
			return bm.MoEDense(ctx, cfg, experts, u, nil)
		}},
	}...)
	var rows []Row
	dense := map[bool]float64{}
	for _, v := range variants {
		for _, backward := range []bool{false, true} {
			pass := "fwd"
			if backward {
				pass = "fwd+bwd"
			}
			row := Row{Bench: "moe-" + pass, Variant: v.name, Shape: shape, Reps: reps, PeakBytes: -1}
			row.FLOPs = fwdFLOPs
			if backward {
				row.FLOPs = 3 * fwdFLOPs
			}
			err := catch(func() error {
				ctx := context.New()
				ctx.SetParam("initializers_seed", int64(1))
				ctx.SetParam(bm.ParamMoEBlock, v.dispatch)
				e, err := context.NewExec(backend, ctx, func(ctx *context.Context, u, w *Node) []*Node {
					out := v.block(ctx.In("block"), u)
					loss := ReduceAllSum(Mul(ConvertDType(out, dtypes.Float32), w))
					if !backward {
						return []*Node{loss}
					}
					return []*Node{withGradients(ctx, loss, u)}
				})
				if err != nil {
					return err
				}
				row.CompileS, row.Ms, row.MinMs, err = timeExec(e, []any{uT, wT}, 3, reps)
				return err
			})
			if err != nil {
				row.Err = err.Error()
			} else {
				row.TokensPerS = float64(tokens) / (row.Ms / 1000)
				row.MFU = row.FLOPs / (row.Ms / 1000) / PeakBF16FLOPs
				row.Extra = map[string]float64{"expert_flops": v.expertFLOPs}
				if v.name == variants[0].name {
					dense[backward] = row.Ms
				} else if d := dense[backward]; d > 0 {
					row.Extra["x_dense"] = row.Ms / d
				}
			}
			rows = append(rows, row)
			emit(&row)
		}
	}
	return rows
}
