package bm

import (
	"slices"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// The router of an MoE block that follows a Mamba block, computed inside the Mamba block's batch-1
// step (Config.StepFuse "router"). With x the Mamba block's input (the residual), r the MoE
// block's input and Rg [E, d] the router with the MoE norm's gain folded in (FoldStepWeights):
//
//	r = x + W_out·y, so Rg·r = Rg·x + (Rg·W_out)·y.
//
// Rg·x comes out of the Mamba in_proj's row reduction as E more rows (the raw residual is its
// input already), and (Rg·W_out)·y out of the out_proj's as E more rows, both from the copies
// makeRouterCopies makes with those rows below the block's own, with Rg·x as their added column
// where the residual is added inside the product ("residual"). The MoE block then needs only
// the sum of squares of r for its norm: the logits are Rg·r/rms(r) + bias, the same as the
// router's product of the normed input, up to rounding (the router's rows are in the weights'
// dtype there). The router's operand and product kernels go.

// routerFold carries the router of the MoE block after a Mamba block through the Mamba block's
// step: in and out the in_proj [2D+E, d] and out_proj [d+E, D] copies with the router's rows
// (makeRouterCopies); raw [1, E] = Rg·x once in_proj ran, logits [1, E] = Rg·r once out_proj
// ran.
type routerFold struct {
	in, out     *Node
	experts     int
	raw, logits *Node
}

// newRouterFold returns the routerFold of the Mamba block in mctx (its mixer scope) for the MoE
// block in next (its mixer scope) with experts experts, or nil unless cfg.StepFuse has
// "router", in is rowwise and the copies it needs exist.
func newRouterFold(mctx, next *context.Context, cfg Config, in stepInput, experts int) *routerFold {
	if !cfg.stepFuses("router") || !in.rowwise() {
		return nil
	}
	g := in.graph()
	d, D := cfg.Dim, cfg.Inner()
	fc1 := next.InspectVariableIfLoaded(next.Scope(), "fc1"+stepTNSuffix)
	inR := mctx.InspectVariableIfLoaded(mctx.Scope(), "in_proj"+stepRouterSuffix)
	outR := mctx.InspectVariableIfLoaded(mctx.Scope(), "out_proj"+stepRouterSuffix)
	if fc1 == nil || inR == nil || outR == nil || !slices.Equal(inR.Shape().Dimensions, []int{2*D + experts, d}) ||
		!slices.Equal(outR.Shape().Dimensions, []int{d + experts, D}) {
		return nil
	}
	return &routerFold{in: inR.ValueGraph(g), out: outR.ValueGraph(g), experts: experts}
}

// inProj is the Mamba block's in_proj of the rowwise input in with the router's rows: it
// returns the normed product [1, out] as stepInput.project does and keeps Rg·x in f.raw.
func (f *routerFold) inProj(cfg Config, in stepInput, outDim int) *Node {
	// The router's rows stay raw: only the in_proj rows take the 1/rms.
	p := in.rawRowProduct(cfg, f.in) // [1, out+E]
	f.raw = SliceAxis(p, 1, AxisRange(outDim, outDim+f.experts))
	return Mul(SliceAxis(p, 1, AxisRange(0, outDim)), in.norm.invRMS)
}

// outProj is the Mamba block's out_proj of y [1, D] with the router's rows: it returns what
// stepInput.product does (the new residual when in addsResidual, else the block's output) and
// sets f.logits to the router's raw logits of the new residual, Rg·r.
func (f *routerFold) outProj(cfg Config, in stepInput, y *Node, outDim int) *Node {
	E := f.experts
	if in.addsResidual(cfg) {
		p, _ := stepRowProductPadded(y, f.out, false, Concatenate([]*Node{in.x, f.raw}, 1), residualPad(cfg, y.Shape().Dim(1)))
		f.logits = SliceAxis(p, 1, AxisRange(outDim, outDim+E))
		return SliceAxis(p, 1, AxisRange(0, outDim))
	}
	p, _ := stepRowProduct(y, f.out, false, nil)
	f.logits = Add(SliceAxis(p, 1, AxisRange(outDim, outDim+E)), f.raw)
	return SliceAxis(p, 1, AxisRange(0, outDim))
}

// routedLogits returns the router logits of the rowwise MoE input in [1, d] from raw = rt·r
// (routerFold.logits): raw/rms(r) + bias. It sets the input's 1/rms, which fc1 then uses.
func routedLogits(cfg Config, in stepInput, raw, bias *Node) *Node {
	in.setNormFromSquares(cfg, ReduceAndKeep(Square(in.x), ReduceSum, -1))
	return Add(Mul(raw, in.norm.invRMS), InsertAxes(bias, 0))
}
