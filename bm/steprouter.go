package bm

import (
	"fmt"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
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
// input already), and (Rg·W_out)·y out of the out_proj's as E more rows of the [E, D] copy
// FoldStepWeights makes, with Rg·x as their added column where the residual is added inside the
// product ("residual"). The MoE block then needs only the sum of squares of r for its norm: the
// logits are Rg·r/rms(r) + bias, the same as the router's product of the normed input, up to
// rounding. The router's operand and product kernels go; the expert is then picked by E − 1
// elementwise comparisons rather than an argmax reduction.

// routerFold carries the router of the MoE block after a Mamba block through the Mamba block's
// step: rt [E, d] the MoE block's gain-folded router copy, ro [E, D] the out_proj copy of
// makeRouterCopies; raw [1, E] = rt·x once in_proj ran, logits [1, E] = rt·r once out_proj ran.
type routerFold struct {
	rt, ro      *Node
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
	rt := stepTransposed(next, g, "router_weight", true, experts, d)
	fc1 := next.InspectVariableIfLoaded(next.Scope(), "fc1"+stepTNSuffix)
	v := mctx.InspectVariableIfLoaded(mctx.Scope(), "out_proj"+stepRouterSuffix)
	if rt == nil || fc1 == nil || v == nil || !slices.Equal(v.Shape().Dimensions, []int{experts, D}) {
		return nil
	}
	return &routerFold{rt: ConvertDType(rt, dtypes.Float32), ro: ConvertDType(v.ValueGraph(g), dtypes.Float32)}
}

// inProj is the Mamba block's in_proj of the rowwise input in with the router's rows: it
// returns the normed product [1, out] as stepInput.project does and keeps rt·x in f.raw.
func (f *routerFold) inProj(ctx *context.Context, cfg Config, in stepInput, inDim, outDim int) *Node {
	wt := stepTransposed(ctx, in.graph(), "in_proj", true, outDim, inDim)
	if wt == nil {
		panic(fmt.Sprintf("bm: decoding step: in_proj%s is missing or not [%d, %d]", stepTNSuffix, outDim, inDim))
	}
	// The router's rows stay raw: only the in_proj rows take the 1/rms.
	p := in.rawRowProduct(cfg, Concatenate([]*Node{ConvertDType(wt, dtypes.Float32), f.rt}, 0)) // [1, out+E]
	f.raw = SliceAxis(p, 1, AxisRange(outDim, outDim+f.rt.Shape().Dim(0)))
	return Mul(SliceAxis(p, 1, AxisRange(0, outDim)), in.norm.invRMS)
}

// outProj is the Mamba block's out_proj of y [1, inDim] with the router's rows: it returns what
// stepInput.product does (the new residual when in addsResidual, else the block's output) and
// sets f.logits to the router's raw logits of the new residual, rt·r.
func (f *routerFold) outProj(ctx *context.Context, cfg Config, in stepInput, y *Node, inDim, outDim int) *Node {
	wt := stepTransposed(ctx, y.Graph(), "out_proj", false, outDim, inDim)
	if wt == nil {
		panic(fmt.Sprintf("bm: decoding step: out_proj%s is missing or not [%d, %d]", stepTSuffix, outDim, inDim))
	}
	w := Concatenate([]*Node{ConvertDType(wt, dtypes.Float32), f.ro}, 0) // [out+E, in]
	E := f.ro.Shape().Dim(0)
	if in.addsResidual(cfg) {
		p, _ := stepRowProduct(y, w, false, Concatenate([]*Node{in.x, f.raw}, 1))
		f.logits = SliceAxis(p, 1, AxisRange(outDim, outDim+E))
		return SliceAxis(p, 1, AxisRange(0, outDim))
	}
	p, _ := stepRowProduct(y, w, false, nil)
	f.logits = Add(SliceAxis(p, 1, AxisRange(outDim, outDim+E)), f.raw)
	return SliceAxis(p, 1, AxisRange(0, outDim))
}

// routedLogits returns the router logits of the rowwise MoE input in [1, d] from raw = rt·r
// (routerFold.logits): raw/rms(r) + bias. It sets the input's 1/rms, which fc1 then uses.
func routedLogits(cfg Config, in stepInput, raw, bias *Node) *Node {
	in.setNormFromSquares(cfg, ReduceAndKeep(Square(in.x), ReduceSum, -1))
	return Add(Mul(raw, in.norm.invRMS), InsertAxes(bias, 0))
}

// argMaxFew returns the index [B] int32 of the largest of logits [B, E] along its last axis (the
// first of equals, as ArgMax) and that largest value [B], by E − 1 elementwise comparisons: for
// a handful of experts, so that the compiler can fuse the choice with its neighbours instead of
// launching a reduction.
func argMaxFew(logits *Node) (idx, best *Node) {
	E := logits.Shape().Dim(-1)
	best = SliceAxis(logits, -1, AxisElem(0))
	idx = ZerosLike(ConvertDType(best, dtypes.Int32))
	for e := 1; e < E; e++ {
		l := SliceAxis(logits, -1, AxisElem(e))
		above := GreaterThan(l, best)
		best = Where(above, l, best)
		idx = Where(above, AddScalar(ZerosLike(idx), float64(e)), idx)
	}
	return Squeeze(idx, -1), Squeeze(best, -1)
}
