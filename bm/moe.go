package bm

import (
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// The MoE block (SPEC.md §3): a router Linear(d → E) with bias picks one expert per token, the
// token goes through that expert only (a gated MLP), and the result is scaled by the sigmoid of
// the chosen logit:
//
//	ℓ_t = u_t·router_weight + router_bias            [E], float32
//	e*  = choice(ℓ)                                  argmax, or Sinkhorn-balanced when training
//	o_t = sigmoid(ℓ_{t,e*}) · fc2_{e*}(act(gate) ⊙ up),  [gate ; up] = u_t·fc1_{e*}
//
// Variables, in the scope of ctx (the caller scopes it to /decoder/layers/{i}/mixer):
// router_weight [d, E], router_bias [E], fc1 [E, d, 2F] (gate columns first), fc2 [E, F, d].
//
// Dispatch (training and prefill): dropless grouped matmul by blocks.
//  1. Rank of each token among the tokens of its expert: an exclusive prefix sum over tokens of
//     the one-hot choice [T, E], computed with triangular matmuls inside chunks of 128 tokens
//     plus a triangular matmul across chunk totals (CumSum is O(T²) on the CPU backend).
//  2. Each expert's group is padded up to a multiple of the block size b; the groups are laid
//     out one after the other, expert 0 first, in a buffer of R = ⌊(T + E·(b−1))/b⌋·b rows
//     (the most the padded groups can take). Token t goes to row offset[e*_t] + rank_t
//     (ScatterSum into zeros; its gradient is a Gather).
//  3. The buffer is cut into R/b blocks of b rows; each block belongs to one expert, found by
//     comparing the block start with the group ends. The expert matmuls are batched matmuls
//     over blocks, [blocks, b, d] × fc1[blockExpert] [blocks, d, 2F], and the same for fc2
//     (the per-block weights are selected by a one-hot matmul, see moeGroupedExperts): every
//     row is multiplied by its own expert's weights only, and each block reads its expert's
//     weights once.
//  4. Outputs are gathered back to token order (Gather; its gradient is a ScatterSum).
//
// Costs: matmul FLOPs are 6·d·F per buffer row, i.e. per token times R/T ≤ 1 + E·(b−1)/T (the
// padding); weights are read (and, with autodiff, kept) R/b times. The automatic block size
// (MoEBlockSize) keeps the padding under 1/4 of the tokens and b ≤ 512; with b = 1 the scheme
// degenerates to gathering one expert per token, which is what small T (decoding) wants.
//
// Padding rows are zero, so they produce zero outputs (the experts have no biases) and are
// never gathered back; empty trailing blocks are assigned the last expert and stay zero.

// ParamMoEBlock is the context hyperparameter that fixes the dispatch block size of MoE
// (an int; 0 or unset picks MoEBlockSize automatically).
const ParamMoEBlock = "moe_block"

// moeCumsumChunk is the chunk length of the token prefix sum used by the dispatch.
const moeCumsumChunk = 128

// MoEResult is everything MoEWithStats computes.
type MoEResult struct {
	Out    *Node // [..., d] float32, same leading axes as the input
	Counts *Node // [E] int32: tokens routed to each expert
	Choice *Node // [N] int32: the expert of each token (tokens flattened)
	Logits *Node // [N, E] float32 router logits
	Aux    *Node // scalar float32 load-balancing loss (already weighted) for RoutingSwitch, else nil
	// SinkhornIters is the scalar int32 number of Sinkhorn rounds run for the Sinkhorn routes,
	// else nil.
	SinkhornIters *Node
}

// MoE runs the MoE block on u [B, T, d] or [N, d] (any leading axes) with the given number of
// experts and routing: RoutingArgmax (inference), RoutingSinkhorn, RoutingSinkhornVanilla,
// RoutingSwitch, or "" for cfg.Routing. Returns out with the shape of u (float32), the tokens
// per expert counts [E] int32, and aux: for RoutingSwitch the load-balancing loss
// SwitchAuxWeight·E·Σ_e f_e·P_e (f_e = share of tokens routed to e, P_e = mean router softmax
// probability of e), ready to be added to the training loss; nil for the other routes.
//
// The gate is sigmoid(ℓ_{t,e*}) for every route, so a model trained with any route is run at
// inference with argmax and the same gate. The Sinkhorn routes work on the detached logits of
// all tokens of the call, and run at most SinkhornRounds(cfg, route) rounds.
func MoE(ctx *context.Context, cfg Config, experts int, u *Node, route string) (out, counts, aux *Node) {
	r := MoEWithStats(ctx, cfg, experts, u, route)
	return r.Out, r.Counts, r.Aux
}

// MoEWithStats is MoE returning also the choices, the logits and the number of Sinkhorn rounds.
func MoEWithStats(ctx *context.Context, cfg Config, experts int, u *Node, route string) MoEResult {
	g := u.Graph()
	if experts < 1 {
		panic(fmt.Sprintf("bm.MoE: experts must be >= 1, got %d", experts))
	}
	if u.Shape().Dim(-1) != cfg.Dim {
		panic(fmt.Sprintf("bm.MoE: input %s does not end in d_model=%d", u.Shape(), cfg.Dim))
	}
	if route == "" {
		route = cfg.Routing
	}
	x, lead := flattenTokens(ConvertDType(u, dtypes.Float32)) // [T, d]
	numT := x.Shape().Dim(0)
	w := moeVariables(ctx, g, cfg, experts)
	logits := Add(Einsum("td,de->te", x, w.routerW), InsertAxes(w.routerB, 0)) // [T, E] float32

	var r MoEResult
	r.Logits = logits
	switch route {
	case RoutingArgmax:
		r.Choice = ArgMax(logits, -1, dtypes.Int32)
	case RoutingSinkhorn, RoutingSinkhornVanilla:
		r.Choice, r.SinkhornIters = SinkhornRoute(logits, route, SinkhornRounds(cfg, route), cfg.SinkhornTol)
	case RoutingSwitch:
		r.Choice = ArgMax(logits, -1, dtypes.Int32)
	default:
		panic(fmt.Sprintf("bm.MoE: unknown route %q (want %s, %s, %s or %s)", route,
			RoutingArgmax, RoutingSinkhorn, RoutingSinkhornVanilla, RoutingSwitch))
	}
	oneHot := OneHot(r.Choice, experts, dtypes.Float32) // [T, E]
	countsF := ReduceSum(oneHot, 0)                     // [E]
	r.Counts = ConvertDType(countsF, dtypes.Int32)
	if route == RoutingSwitch {
		frac := DivScalar(countsF, float64(numT))
		meanProb := ReduceMean(Softmax(logits, -1), 0)
		r.Aux = MulScalar(ReduceAllSum(Mul(frac, meanProb)), cfg.SwitchAuxWeight*float64(experts))
	}

	gate := ReduceSum(Mul(Sigmoid(logits), oneHot), -1) // [T]: sigmoid(ℓ_{t,e*})
	block := context.GetParamOr(ctx, ParamMoEBlock, 0)
	if block <= 0 {
		block = MoEBlockSize(numT, experts)
	}
	y := moeDispatch(cfg, x, r.Choice, oneHot, w.fc1, w.fc2, block) // [T, d]
	y = Mul(y, InsertAxes(gate, -1))
	r.Out = Reshape(y, append(lead, cfg.Dim)...)
	return r
}

// MoEStep is the MoE block for one decoding step: u [B, d] → out [B, d] float32, with the
// argmax choice [B] int32. It gathers only the chosen experts' fc1 and fc2 (at batch 1 it
// reads one expert's weights, plus the router). Same variables and result as
// MoE(…, RoutingArgmax) on the same tokens.
func MoEStep(ctx *context.Context, cfg Config, experts int, u *Node) (out, choice *Node) {
	if u.Rank() != 2 || u.Shape().Dim(1) != cfg.Dim {
		panic(fmt.Sprintf("bm.MoEStep: input must be [B, d=%d], got %s", cfg.Dim, u.Shape()))
	}
	return moeStep(ctx, cfg, experts, normedStepInput(ConvertDType(u, dtypes.Float32)), nil)
}

// moeStep is MoEStep with the block's input as a stepInput: the normed token, or the raw
// residual for the gain-folded copies of the router and fc1 (FoldStepWeights). routed, when not
// nil, holds the router's raw logits of the rowwise input, computed by the Mamba block before it
// (routerFold.logits, Config.StepFuse "router").
func moeStep(ctx *context.Context, cfg Config, experts int, in stepInput, routed *Node) (out, choice *Node) {
	g := in.graph()
	d, f := cfg.Dim, cfg.FFN
	x := in.u
	fc1T, fc2T := stepTransposed(ctx, g, "fc1", in.folded(), experts, 2*f, d), stepTransposed(ctx, g, "fc2", false, experts, d, f)
	transposed := fc1T != nil && fc2T != nil
	if in.folded() {
		if !in.rowwise() {
			x = in.scaled()
		}
		if !transposed {
			panic(fmt.Sprintf("bm: MoE decoding step: fc1%s [%d, %d, %d] and fc2%s [%d, %d, %d] must both exist (FoldStepWeights)", stepTNSuffix, experts, 2*f, d, stepTSuffix, experts, d, f))
		}
	}
	w := moeVariablesFor(ctx, g, cfg, experts, !transposed, !in.folded())
	var logits, gate *Node
	switch {
	case in.rowwise() && routed != nil:
		logits = routedLogits(cfg, in, routed, w.routerB)
	case in.rowwise():
		// The router's product first: it computes the norm's 1/rms for fc1's too.
		logits = Add(in.project(ctx, cfg, "router_weight", d, experts), InsertAxes(w.routerB, 0))
	case in.folded():
		routerT := stepTransposed(ctx, g, "router_weight", true, experts, d)
		logits = Add(Einsum("bd,ed->be", x, routerT), InsertAxes(w.routerB, 0))
	default:
		logits = Add(Einsum("bd,de->be", x, w.routerW), InsertAxes(w.routerB, 0))
	}
	if gate == nil {
		choice = ArgMax(logits, -1, dtypes.Int32)
		// sigmoid(ℓ_{e*}) as the sigmoid of the largest logit: the same value, and a reduction
		// over the same logits as the argmax's, which the compiler can compute in the same kernel.
		gate = Sigmoid(ReduceMax(logits, -1))
	}
	if in.rowwise() {
		// The chosen expert's rows, as row reductions of the raw residual, then of the
		// activation, in float32 (stepRowProduct).
		idx := InsertAxes(choice, -1)
		h := in.rowProduct(cfg, Gather(fc1T, idx)) // [1, 2F]
		a := gatedActivation(cfg, h)
		if in.addsResidual(cfg) {
			// The gate inside the product, the residual as its extra column: the new residual.
			y, _ := stepRowProductPadded(Mul(a, InsertAxes(gate, -1)), Gather(fc2T, idx), false, in.x, residualPad(cfg, f))
			return y, choice
		}
		y, _ := stepRowProduct(a, Gather(fc2T, idx), false, nil) // [1, d]
		return Mul(y, InsertAxes(gate, -1)), choice
	}
	// One group per sequence, its token padded to cfg.StepRows rows (see StepProduct).
	xs, cut := padStepRows(cfg, InsertAxes(x, 1), 1)
	var y *Node
	if transposed {
		// The chosen experts' transposed copies (TransposeStepWeights): [B, 2F, d] and [B, d, F].
		idx := InsertAxes(choice, -1)
		dt := ComputeDType(cfg)
		h := ComputeEinsum(cfg, "gbd,gfd->gbf", xs, ConvertDType(Gather(fc1T, idx), dt))
		y = ComputeEinsum(cfg, "gbf,gdf->gbd", gatedActivation(cfg, h), ConvertDType(Gather(fc2T, idx), dt))
	} else {
		y = moeGroupedExperts(cfg, xs, choice, w.fc1, w.fc2)
	}
	y = cut(y) // [B, 1, d]
	return Mul(Squeeze(y, 1), InsertAxes(gate, -1)), choice
}

type moeWeights struct{ routerW, routerB, fc1, fc2 *Node }

// IsExpertWeight reports whether v is an MoE block's expert weight, fc1 [E, d, 2F] or fc2
// [E, F, d]: the variables that expert parallelism splits over the devices along the expert
// axis (train.Config.Sharded). The dense MLP's fc1 and fc2 are rank 2 and not selected.
func IsExpertWeight(v *context.Variable) bool {
	return (v.Name() == "fc1" || v.Name() == "fc2") && v.Shape().Rank() == 3
}

// moeVariables creates or reuses the MoE variables in the scope of ctx.
func moeVariables(ctx *context.Context, g *Graph, cfg Config, experts int) moeWeights {
	return moeVariablesFor(ctx, g, cfg, experts, true, true)
}

// moeVariablesFor is moeVariables, leaving the experts' fc1 and fc2 out when expertWeights is false
// (a decoding step that reads their transposed copies), and the router weight when
// routerWeight is false (a step that reads its gain-folded copy).
func moeVariablesFor(ctx *context.Context, g *Graph, cfg Config, experts int, expertWeights, routerWeight bool) moeWeights {
	d, f := cfg.Dim, cfg.FFN
	var w moeWeights
	if routerWeight {
		w.routerW = weightVar(ctx, g, cfg, "router_weight", false, d, experts)
	}
	w.routerB = ctx.WithInitializer(initializers.Zero).
		VariableWithShape("router_bias", shapes.Make(dtypes.Float32, experts)).ValueGraph(g)
	if expertWeights {
		w.fc1 = weightVar(ctx, g, cfg, "fc1", false, experts, d, 2*f)
		w.fc2 = weightVar(ctx, g, cfg, "fc2", true, experts, f, d)
	}
	return w
}

// MoEBlockSize is the automatic dispatch block size for T tokens and E experts: the largest
// power of two b ≤ T/(4E), at least 1 and at most 512. It bounds the padding rows by
// E·(b−1) < T/4 while keeping blocks (and so the per-block weight copies) few. On an H200 at
// 16K tokens (d 512, F 1536, 8 experts, bf16) blocks of 512 took the forward from 0.97 to
// 0.67 ms and the forward+backward from 1.57 to 1.42 ms against blocks of 256, the previous
// rule (padding < T/8, b ≤ 256).
func MoEBlockSize(tokens, experts int) int {
	b := 1
	for b*2 <= 512 && b*2*4*experts <= tokens {
		b *= 2
	}
	return b
}

// MoEDispatchRows returns the number of buffer rows the dispatch uses for T tokens, E experts
// and block size b: ⌊(T + E·(b−1))/b⌋·b, an upper bound of Σ_e ⌈count_e/b⌉·b.
func MoEDispatchRows(tokens, experts, block int) int {
	return (tokens + experts*(block-1)) / block * block
}

// moeDispatch computes fc2_{e_t}(act(gate) ⊙ up) for every token t of x [T, d] with its expert
// choice [T] (oneHot [T, E] is OneHot(choice)), by the blocked grouping described at the top
// of this file. Returns [T, d] float32.
func moeDispatch(cfg Config, x, choice, oneHot, fc1, fc2 *Node, block int) *Node {
	g := x.Graph()
	numT, d := x.Shape().Dim(0), x.Shape().Dim(1)
	numE := oneHot.Shape().Dim(1)
	rows := MoEDispatchRows(numT, numE, block)
	numBlocks := rows / block

	// Rank of each token within its expert's group, and the group sizes.
	oneHot = StopGradient(oneHot)
	rank := ReduceSum(Mul(exclusiveCumsumTokens(oneHot), oneHot), -1) // [T] float32
	counts := ReduceSum(oneHot, 0)                                    // [E]
	padded := MulScalar(Ceil(DivScalar(counts, float64(block))), float64(block))
	// Inclusive prefix sum over experts with an upper-triangular [E, E] matrix.
	upper := ConvertDType(UpperTriangular(g, numE), dtypes.Float32)
	ends := Einsum("e,ej->j", padded, upper)                                              // [E]
	offsets := Sub(ends, padded)                                                          // [E]
	pos := ConvertDType(Add(Gather(offsets, InsertAxes(choice, -1)), rank), dtypes.Int32) // [T]

	// Expert of each block: the number of groups that end at or before the block start.
	blockStart := MulScalar(Iota(g, shapes.Make(dtypes.Float32, numBlocks), 0), float64(block))
	ended := ConvertDType(LessOrEqual(InsertAxes(ends, 0), InsertAxes(blockStart, -1)), dtypes.Int32) // [blocks, E]
	blockExpert := MinScalar(ReduceSum(ended, -1), numE-1)                                            // [blocks]

	xs := Scatter(InsertAxes(pos, -1), ConvertDType(x, ComputeDType(cfg)), shapes.Make(ComputeDType(cfg), rows, d), false, true)
	ys := moeGroupedExperts(cfg, Reshape(xs, numBlocks, block, d), blockExpert, fc1, fc2) // [blocks, b, d]
	return Gather(Reshape(ys, rows, d), InsertAxes(pos, -1))
}

// moeGroupedExperts applies expert expert[n] to the rows of group n: xs [G, b, d] with
// expert [G] int32 → [G, b, d] float32. It gathers each group's fc1 [d, 2F] and fc2 [F, d] in
// the compute dtype. With fewer groups than experts (decoding: one group per sequence) it gathers
// before converting, so only the chosen experts' weights are read; with more (training: one
// group per dispatch block) it converts first, so the copies are half size in bfloat16, and
// selects with a one-hot matmul, whose gradient is a matmul rather than a colliding ScatterSum.
func moeGroupedExperts(cfg Config, xs, expert, fc1, fc2 *Node) *Node {
	dt := ComputeDType(cfg)
	idx := InsertAxes(expert, -1)
	var w1, w2 *Node
	if expert.Shape().Dim(0) <= fc1.Shape().Dim(0) {
		w1 = ConvertDType(Gather(fc1, idx), dt) // [G, d, 2F]
		w2 = ConvertDType(Gather(fc2, idx), dt) // [G, F, d]
	} else {
		// Selecting by a one-hot matmul instead of a Gather: the forward is the same copy (one
		// non-zero term per output, exact in any dtype), but the weights' gradient becomes a
		// matmul that sums the groups of each expert, where a Gather's gradient is a ScatterSum
		// of G full weight matrices into E slots (atomic adds that collide G/E times each).
		sel := OneHot(expert, fc1.Shape().Dim(0), dt) // [G, E]
		w1 = Einsum("ge,edf->gdf", sel, ConvertDType(fc1, dt))
		w2 = Einsum("ge,efd->gfd", sel, ConvertDType(fc2, dt))
	}
	h := ComputeEinsum(cfg, "gbd,gdf->gbf", xs, w1)
	return ComputeEinsum(cfg, "gbf,gfd->gbd", gatedActivation(cfg, h), w2)
}

// exclusiveCumsumTokens returns the exclusive prefix sum over axis 0 of x [T, E] (float32,
// integer-valued, no gradient): out[t] = Σ_{s<t} x[s]. Inside chunks of moeCumsumChunk rows it
// multiplies by a strictly lower-triangular matrix; chunk totals are prefix-summed the same
// way and added. Cost O(T·chunk·E + (T/chunk)²·E); exact for sums below 2²⁴.
func exclusiveCumsumTokens(x *Node) *Node {
	g := x.Graph()
	numT, numE := x.Shape().Dim(0), x.Shape().Dim(1)
	strict := func(n int) *Node { // [n, n]: 1 where row < column
		return ConvertDType(LogicalNot(LowerTriangular(g, n)), dtypes.Float32)
	}
	if numT <= moeCumsumChunk {
		return Einsum("st,se->te", strict(numT), x)
	}
	c := moeCumsumChunk
	numC := (numT + c - 1) / c
	if numC*c > numT {
		x = Concatenate([]*Node{x, Zeros(g, shapes.Make(x.DType(), numC*c-numT, numE))}, 0)
	}
	xc := Reshape(x, numC, c, numE)
	within := Einsum("st,kse->kte", strict(c), xc)                // [numC, c, E]
	across := Einsum("jk,je->ke", strict(numC), ReduceSum(xc, 1)) // [numC, E]
	out := Reshape(Add(within, InsertAxes(across, 1)), numC*c, numE)
	if numC*c > numT {
		out = Slice(out, AxisRange(0, numT))
	}
	return out
}

// MoEFLOPsPerToken returns the forward FLOPs per token of one MoE block as MoE runs it with
// argmax routing, ignoring the dispatch padding: router 2·d·E + E (bias) + 4·E (sigmoid on
// all logits, gate selection), the chosen expert 6·d·F + 5·F (matmuls, SiLU and product) and
// the gate multiply d. The padding multiplies the expert term by at most
// MoEDispatchRows(T, E, b)/T (< 1.25 with the automatic block size); the dispatch itself
// (prefix sums, scatter, gather) is O(T·E·128 + d) per call and not counted. Sinkhorn adds
// about 12·E FLOPs per token per unrolled round during training.
func MoEFLOPsPerToken(cfg Config, experts int) float64 {
	d, f, e := float64(cfg.Dim), float64(cfg.FFN), float64(experts)
	return 2*d*e + 5*e + 6*d*f + 5*f + d
}
