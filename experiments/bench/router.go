package bench

import (
	"fmt"
	"math/rand/v2"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"blackmamba/bm"
)

// Router times the expert choice alone on router logits [tokens, experts]: argmax (inference
// and the Switch route), BlackMamba's Sinkhorn and Megatron's (vanilla) Sinkhorn, each unrolled
// to bm.SinkhornRounds(cfg, route) rounds (Extra["unrolled"]). The logits are drawn with a skew
// (expert 0 favoured by one standard deviation), the regime where balancing matters. Each
// Sinkhorn row reports the rounds its stopping test needed in Extra["rounds"] and the largest
// expert share of its choice in Extra["max_share"] (argmax: its own share).
func Router(backend backends.Backend, cfg bm.Config, experts, tokens, reps int) []Row {
	rng := rand.New(rand.NewPCG(13, uint64(tokens)))
	l := make([]float32, tokens*experts)
	for i := range l {
		l[i] = float32(rng.NormFloat64())
		if i%experts == 0 {
			l[i]++
		}
	}
	logits := tensors.FromFlatDataAndDimensions(l, tokens, experts)
	shape := fmt.Sprintf("tokens=%d E=%d", tokens, experts)
	var rows []Row
	for _, route := range []string{bm.RoutingArgmax, bm.RoutingSinkhorn, bm.RoutingSinkhornVanilla} {
		row := Row{Bench: "router", Variant: route, Shape: shape, Reps: reps, PeakBytes: -1}
		var rounds, maxShare float64
		err := catch(func() error {
			e, err := NewExec(backend, func(l *Node) []*Node {
				var choice, iters *Node
				if route == bm.RoutingArgmax {
					choice, iters = ArgMax(l, -1, dtypes.Int32), ScalarZero(l.Graph(), dtypes.Int32)
				} else {
					choice, iters = bm.SinkhornRoute(l, route, bm.SinkhornRounds(cfg, route), cfg.SinkhornTol)
				}
				share := ReduceAllMax(ReduceSum(OneHot(choice, experts, dtypes.Float32), 0))
				return []*Node{DivScalar(share, float64(tokens)), ConvertDType(iters, dtypes.Float32)}
			})
			if err != nil {
				return err
			}
			call := func() error {
				outs, err := e.Exec(logits)
				if err != nil {
					return err
				}
				maxShare = float64(tensors.ToScalar[float32](outs[0]))
				rounds = float64(tensors.ToScalar[float32](outs[1]))
				finalize(outs)
				return nil
			}
			row.CompileS, row.Ms, row.MinMs, err = timeCalls(call, 3, reps)
			return err
		})
		if err != nil {
			row.Err = err.Error()
		} else {
			row.TokensPerS = float64(tokens) / (row.Ms / 1000)
			row.Extra = map[string]float64{"max_share": maxShare}
			if route != bm.RoutingArgmax {
				row.Extra["rounds"] = rounds
				row.Extra["unrolled"] = float64(bm.SinkhornRounds(cfg, route))
			}
		}
		rows = append(rows, row)
		emit(&row)
	}
	return rows
}
