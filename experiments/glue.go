// Package experiments connects the model (bm), the data (bm/data) and the training loop
// (experiments/train) for the command-line drivers and the notebooks, so that the CLI and a
// notebook run the same code.
package experiments

import (
	"fmt"

	"blackmamba/bm"
	"blackmamba/experiments/train"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// SinkhornItersPrefix starts the names of the extra outputs (and of the metrics records'
// extras) that hold an MoE block's number of Sinkhorn rounds, e.g. "sinkhorn_iters/layer_01".
const SinkhornItersPrefix = "sinkhorn_iters/"

// LossFn returns the training loss of model m for the training loop: the mean next-token
// cross-entropy (plus the auxiliary loss of Switch routing), with the tokens-per-expert count
// of each MoE block as extra outputs ("counts/layer_NN", NN the block index), the number of
// Sinkhorn rounds of each MoE block routed by Sinkhorn ("sinkhorn_iters/layer_NN", a scalar
// that the training loop averages between records) and, when present, the auxiliary loss as
// "aux_loss".
func LossFn(m *bm.Model, opts bm.ForwardOptions) train.LossFn {
	moeBlocks := []int{}
	for i, b := range m.Cfg.Blocks() {
		if b.Kind == bm.KindMoE {
			moeBlocks = append(moeBlocks, i)
		}
	}
	return func(ctx *context.Context, tokens *Node) (*Node, map[string]*Node) {
		loss, out := m.Loss(ctx, tokens, opts)
		extra := map[string]*Node{}
		for j, c := range out.ExpertCounts {
			extra[fmt.Sprintf("%slayer_%02d", train.CountsPrefix, moeBlocks[j])] = c
		}
		for j, it := range out.SinkhornIters {
			if it != nil {
				extra[fmt.Sprintf("%slayer_%02d", SinkhornItersPrefix, moeBlocks[j])] = it
			}
		}
		if out.AuxLoss != nil {
			extra["aux_loss"] = out.AuxLoss
		}
		return loss, extra
	}
}

// NoDecay is the model's weight-decay exclusion rule (bm.NoWeightDecay) in the form the
// optimizer takes: A_log, D, biases and norms get no weight decay.
func NoDecay(scopeAndName string) bool {
	scope, name := context.SplitScope(scopeAndName)
	return bm.NoWeightDecay(scope, name)
}
