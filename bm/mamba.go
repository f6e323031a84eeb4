package bm

import (
	"fmt"
	"math"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
	"github.com/gomlx/gomlx/pkg/ml/layers/activations"
)

// The Mamba mixer (SPEC.md §2), its parallel form (Mamba, MambaPrefill) and its recurrent form
// (MambaStep) side by side. Equations, for one token t, with d the model width, D = Expand·d,
// N the state size, K the conv kernel and R the dt rank:
//
//	[x ; z]     = u·W_in                          W_in  [d, 2D]
//	x'          = SiLU(b_c + Σ_k w_c[k] ⊙ x_{t−K+1+k})  (zeros before t = 0; the last tap is x_t)
//	[δ ; B ; C] = x'·W_x                          W_x   [D, R+2N]
//	Δ           = softplus(δ·W_dt + b_dt)         W_dt  [R, D]
//	A           = −exp(A_log)                     A_log [D, N]
//	h_t         = exp(Δ⊗A) ⊙ h_{t−1} + (Δ⊙x')⊗B,  y = h_t·C + D ⊙ x'
//	out         = (y ⊙ SiLU(z))·W_out             W_out [D, d]
//
// Matmuls run in the compute dtype of the config (ComputeEinsum); the conv, the scan, the
// states and the output are float32.

// mambaWeights holds the values of one mixer's variables in a graph.
type mambaWeights struct {
	inProj  *Node // [d, 2D]
	convW   *Node // [K, D]
	convB   *Node // [D]
	xProj   *Node // [D, R+2N]
	dtProj  *Node // [R, D]
	dtBias  *Node // [D]
	aLog    *Node // [D, N]
	dSkip   *Node // [D]
	outProj *Node // [D, d]
}

// mambaVariables creates (or reuses) the mixer's variables in the scope of ctx, named as in the
// package documentation, with the initialisation of init.go.
func mambaVariables(ctx *context.Context, cfg Config, g *Graph) mambaWeights {
	return mambaVariablesFor(ctx, cfg, g, true)
}

// mambaVariablesFor is mambaVariables, leaving the three matmul weights (in_proj, x_proj,
// out_proj) out when matmuls is false: a decoding step reads them through stepMatmulVar, which
// may read their transposed copies instead.
func mambaVariablesFor(ctx *context.Context, cfg Config, g *Graph, matmuls bool) mambaWeights {
	d, D, N, K, R := cfg.Dim, cfg.Inner(), cfg.StateSize, cfg.ConvKernel, cfg.Rank()
	f32 := func(c *context.Context, name string, dims ...int) *Node {
		return c.VariableWithShape(name, shapes.Make(dtypes.Float32, dims...)).ValueGraph(g)
	}
	matmul := func(name string, outProj bool, in, out int) *Node {
		if !matmuls {
			return nil
		}
		return weightVar(ctx, g, cfg, name, outProj, in, out)
	}
	convInit := ctx.WithInitializer(uniformInit(ctx, 1/math.Sqrt(float64(K))))
	return mambaWeights{
		inProj:  matmul("in_proj", false, d, 2*D),
		convW:   f32(convInit, "conv1d_weight", K, D),
		convB:   f32(convInit, "conv1d_bias", D),
		xProj:   matmul("x_proj", false, D, R+2*N),
		dtProj:  f32(ctx.WithInitializer(uniformInit(ctx, 1/math.Sqrt(float64(R)))), "dt_proj", R, D),
		dtBias:  f32(ctx.WithInitializer(dtBiasInit(ctx, cfg)), "dt_proj_bias", D),
		aLog:    f32(ctx.WithInitializer(aLogInit), "A_log", D, N),
		dSkip:   f32(ctx.WithInitializer(initializers.One), "D", D),
		outProj: matmul("out_proj", true, D, d),
	}
}

// Mamba applies the mixer to a sequence. u: [B, T, d] (the normed residual stream) → [B, T, d]
// float32. Variables live in the scope of ctx.
func Mamba(ctx *context.Context, cfg Config, u *Node) *Node {
	out, _, _ := mambaSequence(ctx, cfg, u)
	return out
}

// MambaPrefill is Mamba that also returns the states a recurrent decode continues from:
// conv [B, D, K], the last K pre-conv inputs x in time order (left-padded with zeros when
// T < K), and ssm [B, D, N] float32, the scan state after the last token.
func MambaPrefill(ctx *context.Context, cfg Config, u *Node) (out, conv, ssm *Node) {
	return mambaSequence(ctx, cfg, u)
}

func mambaSequence(ctx *context.Context, cfg Config, u *Node) (out, conv, ssm *Node) {
	g := u.Graph()
	w := mambaVariables(ctx, cfg, g)
	T, D, N, K, R := u.Shape().Dim(1), cfg.Inner(), cfg.StateSize, cfg.ConvKernel, cfg.Rank()

	xz := ComputeEinsum(cfg, "btd,de->bte", u, w.inProj) // [B, T, 2D]
	x := SliceAxis(xz, -1, AxisRange(0, D))
	z := SliceAxis(xz, -1, AxisRange(D, 2*D))

	// Causal depthwise conv: padded[t+K−1] = x[t], with K−1 zeros in front; the window of output
	// t is padded[t .. t+K−1], whose last element is x[t].
	padded := x
	if K > 1 {
		zeros := Zeros(g, shapes.Make(dtypes.Float32, x.Shape().Dim(0), K-1, D))
		padded = Concatenate([]*Node{zeros, x}, 1) // [B, T+K−1, D]
	}
	xc := Add(conv1dTaps(padded, w.convW, T), ExpandLeftToRank(w.convB, 3))
	xc = activations.Swish(xc) // [B, T, D]

	// dt [B, T, R]; bm, cm [B, T, N].
	dt, bm, cm := xProjections(cfg, "btc,ce->bte", xc, w.xProj, R, N)
	delta := Softplus(Add(ComputeEinsum(cfg, "btr,rc->btc", dt, w.dtProj), ExpandLeftToRank(w.dtBias, 3))) // [B, T, D]
	A := Neg(Exp(w.aLog))                                                                                  // [D, N]

	y, hT := SelectiveScan(xc, delta, A, bm, cm, ScanOptions{Chunk: cfg.ScanChunk, MaxBatch: scanMaxBatch(cfg, T), Backward: cfg.ScanBackward})
	y = Add(y, Mul(xc, ExpandLeftToRank(w.dSkip, 3)))
	y = Mul(y, activations.Swish(z))
	out = ComputeEinsum(cfg, "btc,cd->btd", y, w.outProj)

	// Decode state: the last K rows of the zero-padded input, as [B, D, K].
	conv = TransposeAllDims(SliceAxis(padded, 1, AxisRange(T-1, T+K-1)), 0, 2, 1)
	return out, conv, hT
}

// xProjections splits x_proj [D, R+2N] into the low-rank Δ input (R columns, a matmul in the
// compute dtype) and the scan's B and C (N columns each), which are computed by their own
// matmuls with float32 activations and accumulation: they feed the float32 scan directly, and as separate matmul outputs they
// are not slices of a bfloat16 product, which XLA otherwise fused into the scan's reduction
// kernels (on the H200, one such kernel of the training step at T = 2048 took about 3 minutes
// of code generation). The equation maps xc's layout to the output's (e is the column axis).
// MambaStep keeps one matmul for all three parts.
func xProjections(cfg Config, equation string, xc, xProj *Node, R, N int) (dt, bm, cm *Node) {
	dt = ComputeEinsum(cfg, equation, xc, SliceAxis(xProj, -1, AxisRange(0, R)))
	// The weights are rounded to the compute dtype as every other matmul's are, so that
	// weights stored in that dtype (CastWeights) give identical results.
	w := ConvertDType(ConvertDType(xProj, ComputeDType(cfg)), dtypes.Float32)
	xc = ConvertDType(xc, dtypes.Float32)
	bm = Einsum(equation, xc, SliceAxis(w, -1, AxisRange(R, R+N)))
	cm = Einsum(equation, xc, SliceAxis(w, -1, AxisRange(R+N, R+2*N)))
	return dt, bm, cm
}

// conv1dTaps returns Σ_k w[k] ⊙ padded[:, k : k+T, :] for padded [B, T+K−1, D] and w [K, D]:
// the depthwise causal convolution, written with slices (differentiable on every backend).
func conv1dTaps(padded, w *Node, T int) *Node {
	K, D := w.Shape().Dim(0), w.Shape().Dim(1)
	var sum *Node
	for k := 0; k < K; k++ {
		tap := Reshape(SliceAxis(w, 0, AxisElem(k)), 1, 1, D)
		term := Mul(SliceAxis(padded, 1, AxisRange(k, k+T)), tap)
		if sum == nil {
			sum = term
		} else {
			sum = Add(sum, term)
		}
	}
	return sum
}

// MambaStep advances the mixer by one token. u: [B, d] (normed input of the current token);
// conv: [B, D, K] and ssm: [B, D, N] float32, the states after the previous token (from
// MambaPrefill or a previous MambaStep). It returns out [B, d] float32 and the new states.
func MambaStep(ctx *context.Context, cfg Config, u, conv, ssm *Node) (out, conv2, ssm2 *Node) {
	return mambaStep(ctx, cfg, normedStepInput(u), conv, ssm, nil)
}

// mambaStep is MambaStep with the block's input as a stepInput (the normed token, or the raw
// residual for in_proj's gain-folded copy). With rf (Config.StepFuse "router", batch 1) its
// two products also compute the next MoE block's router logits, into rf.logits.
func mambaStep(ctx *context.Context, cfg Config, in stepInput, conv, ssm *Node, rf *routerFold) (out, conv2, ssm2 *Node) {
	w := mambaVariablesFor(ctx, cfg, in.graph(), false)
	D, N, K := cfg.Inner(), cfg.StateSize, cfg.ConvKernel
	x, z := mambaInProj(ctx, cfg, in, rf)

	// Shift the conv state left by one and write the new input in the last slot.
	conv2 = InsertAxes(x, -1)
	if K > 1 {
		conv2 = Concatenate([]*Node{SliceAxis(conv, 2, AxisRange(1, K)), conv2}, 2) // [B, D, K]
	}
	// The two small contractions of the step (over the K conv taps, over the N states) are
	// written as products and sums, which the compiler can fuse with their neighbours, rather
	// than as matmuls. The taps are summed by the sequence form's conv1dTaps over the window
	// [B, K, D] of one output, as elementwise operations: a reduction over K = 4 became a kernel
	// of its own.
	taps := Reshape(conv1dTaps(TransposeAllDims(conv2, 0, 2, 1), w.convW, 1), in.batch(), D) // [B, D]
	xc := activations.Swish(Add(taps, ExpandLeftToRank(w.convB, 2)))                         // [B, D]

	delta, bm, cm := mambaSelect(ctx, cfg, in, w, xc)
	A := Neg(Exp(w.aLog)) // [D, N]

	decay := Exp(Mul(InsertAxes(delta, -1), InsertAxes(A, 0)))                          // [B, D, N]
	ssm2 = Add(Mul(decay, ssm), Mul(InsertAxes(Mul(delta, xc), -1), InsertAxes(bm, 1))) // [B, D, N]
	// y = (Σ_n C_n·h_n + D·x)·silu(z)
	states := Mul(ssm2, InsertAxes(cm, 1))        // [B, D, N]
	skip := Mul(xc, ExpandLeftToRank(w.dSkip, 2)) // [B, D]
	gate := activations.Swish(z)                  // [B, D]
	var y *Node
	if in.rowwise() && cfg.stepFuses("gate") {
		// As one sum over the states: the skip term split evenly over them and every term times
		// the gate, so that the gated output comes out of the state update's reduction
		// (cfg.StepFuse "gate").
		terms := Add(states, InsertAxes(MulScalar(skip, 1/float64(N)), -1))
		y = ReduceSum(Mul(terms, InsertAxes(gate, -1)), -1)
	} else {
		y = Mul(Add(ReduceSum(states, -1), skip), gate)
	}
	return mambaOutProj(ctx, cfg, in, y, rf), conv2, ssm2
}

// mambaRingStep is mambaStep with the block's two states in one tensor, state [B, D, C]
// float32 with C = mambaRingWidth(cfg) (Config.StepFuse "ring"): columns [0, K) hold the
// conv's last K inputs as a ring, the input of position t in column t mod K, columns [K, K+N)
// the SSM state, and the rest, if any ("wide"), zeros; pos is the token's position (scalar
// int32). Nothing moves in the ring: each column of the new state is an elementwise function
// of the same column of the old one (this token's input in column pos mod K, the SSM update in
// the others, the identity in the rest of the ring), so one kernel writes the whole state on a
// GPU, where the two-state form took another for the shifted conv window; with "wide" the
// gated output's sum over the columns is that kernel too. The conv taps are rotated instead,
// to the ring's order at pos. The values are those of mambaStep with "gate" (the skip term
// split evenly over the N state columns).
func mambaRingStep(ctx *context.Context, cfg Config, in stepInput, state, pos *Node, rf *routerFold) (out, state2 *Node) {
	g := in.graph()
	w := mambaVariablesFor(ctx, cfg, g, false)
	D, N, K, B := cfg.Inner(), cfg.StateSize, cfg.ConvKernel, in.batch()
	C := mambaRingWidth(cfg)
	x, z := mambaInProj(ctx, cfg, in, rf)

	// The ring with this token's input in its slot.
	slot := ModScalar(ConvertDType(pos, dtypes.Int32), K)
	isSlot := BroadcastToDims(Equal(Iota(g, shapes.Make(dtypes.Int32, 1, 1, C), 2), slot), B, D, C)
	xs := BroadcastToDims(InsertAxes(x, -1), B, D, C)
	ring := Where(isSlot, xs, state)
	// Tap k (0 the oldest input, K−1 this token's) reads column (pos+1+k) mod K: column c takes
	// tap (c + K − 1 − slot) mod K.
	tap := ModScalar(Sub(AddScalar(Iota(g, shapes.Make(dtypes.Int32, K, 1), 0), K-1), slot), K)
	rot := Gather(w.convW, tap) // [K, D]
	var taps *Node
	for c := range K {
		term := Mul(Reshape(SliceAxis(ring, 2, AxisElem(c)), B, D), SliceAxis(rot, 0, AxisElem(c)))
		if taps == nil {
			taps = term
		} else {
			taps = Add(taps, term)
		}
	}
	xc := activations.Swish(Add(taps, ExpandLeftToRank(w.convB, 2))) // [B, D]

	// A, B and C with zero columns for the ring and the padding: the update leaves those columns
	// as they are (exp(0)·s + 0), and the output's sum takes nothing from them. With "wide" they
	// come from FoldStepWeights' copies with those zeros in place, so that the compiler sees no
	// zeros to split the update at.
	var delta, aFull, bFull, cFull *Node
	if cfg.stepFuses("wide") {
		delta, aFull, bFull, cFull = mambaWideSelect(ctx, cfg, in, w, xc, C)
	} else {
		var bm, cm *Node
		delta, bm, cm = mambaSelect(ctx, cfg, in, w, xc)
		pad := func(v *Node) *Node { // [X, N] → [X, K+N] (C = K+N without "wide")
			return Concatenate([]*Node{Zeros(g, shapes.Make(dtypes.Float32, v.Shape().Dim(0), K)), v}, 1)
		}
		aFull, bFull, cFull = pad(Neg(Exp(w.aLog))), pad(bm), pad(cm) // [D, C], [B, C], [B, C]
	}
	decay := Exp(Mul(InsertAxes(delta, -1), InsertAxes(aFull, 0))) // [B, D, C]
	upd := Add(Mul(decay, state), Mul(InsertAxes(Mul(delta, xc), -1), InsertAxes(bFull, 1)))
	state2 = Where(isSlot, xs, upd)

	// y = Σ_c (C_c·h_c + D·x/N over the state columns)·silu(z)
	skip := Mul(xc, ExpandLeftToRank(w.dSkip, 2)) // [B, D]
	spread := make([]float32, C)
	for c := K; c < K+N; c++ {
		spread[c] = 1 / float32(N)
	}
	terms := Add(Mul(state2, InsertAxes(cFull, 1)), Mul(InsertAxes(skip, -1), Reshape(Const(g, spread), 1, 1, C)))
	y := ReduceSum(Mul(terms, InsertAxes(activations.Swish(z), -1)), -1) // [B, D]
	return mambaOutProj(ctx, cfg, in, y, rf), state2
}

// mambaRingState returns the "ring" state [B, D, C] of a Mamba block after a prompt of P
// tokens from its two states (MambaPrefill): the conv state's columns (positions P−K … P−1)
// rotated to columns (P−K+i) mod K, then the SSM state and zeros up to C = mambaRingWidth.
func mambaRingState(cfg Config, conv, ssm *Node, P int) *Node {
	K, N, C := cfg.ConvKernel, cfg.StateSize, mambaRingWidth(cfg)
	if s := P % K; s != 0 {
		conv = Concatenate([]*Node{SliceAxis(conv, 2, AxisRange(K-s, K)), SliceAxis(conv, 2, AxisRange(0, K-s))}, 2)
	}
	parts := []*Node{conv, ssm}
	if C > K+N {
		parts = append(parts, Zeros(conv.Graph(), shapes.Make(dtypes.Float32, conv.Shape().Dim(0), conv.Shape().Dim(1), C-K-N)))
	}
	return Concatenate(parts, 2)
}

// mambaRingWidth is the number of columns of a "ring" state (mambaRingStep): K + N, or with
// Config.StepFuse "wide" ringWidth(K, N). A GPU compiler
// (XLA) gives a sum along rows of fewer than 32 elements the reduction kernel, which can also
// write the new state, only when the row length divides 32; at K + N = 20 (kernel 4, 16
// states) the sum took a kernel of its own.
func mambaRingWidth(cfg Config) int {
	if !cfg.stepFuses("wide") {
		return cfg.ConvKernel + cfg.StateSize
	}
	return ringWidth(cfg.ConvKernel, cfg.StateSize)
}

// ringWidth is K + N rounded up to a power of two when it is below 32, else K + N.
func ringWidth(K, N int) int {
	c := K + N
	if c >= 32 {
		return c
	}
	w := 1
	for w < c {
		w *= 2
	}
	return w
}

// mambaInProj is a step's in_proj of the block input (with rf's router rows when rf is not
// nil): x and z [B, D] float32.
func mambaInProj(ctx *context.Context, cfg Config, in stepInput, rf *routerFold) (x, z *Node) {
	d, D := cfg.Dim, cfg.Inner()
	var xz *Node
	if rf != nil {
		xz = rf.inProj(cfg, in, 2*D)
	} else {
		xz = in.project(ctx, cfg, "in_proj", d, 2*D) // [B, 2D]
	}
	return SliceAxis(xz, -1, AxisRange(0, D)), SliceAxis(xz, -1, AxisRange(D, 2*D))
}

// mambaSelect is a step's x_proj and dt_proj of the conv output xc [B, D]: Δ [B, D], B and C
// [B, N].
func mambaSelect(ctx *context.Context, cfg Config, in stepInput, w mambaWeights, xc *Node) (delta, bm, cm *Node) {
	D, N, R := cfg.Inner(), cfg.StateSize, cfg.Rank()
	// One matmul for the three parts here (a decode step is bound by its kernel count, and the
	// slow kernel xProjections avoids only arises in the sequence form); in float32 its values
	// equal the sequence form's.
	xdbl := in.product(ctx, cfg, "x_proj", false, xc, D, R+2*N) // [B, R+2N]
	dt := SliceAxis(xdbl, -1, AxisRange(0, R))
	bm = SliceAxis(xdbl, -1, AxisRange(R, R+N))
	cm = SliceAxis(xdbl, -1, AxisRange(R+N, R+2*N))
	return mambaDelta(ctx, cfg, in, w, dt), bm, cm
}

// mambaDelta is a step's Δ = softplus(δ·W_dt + b_dt) [B, D] from δ [B, R]. With
// Config.StepFuse "dtrow" and a rowwise input the product is a sum along the rows of
// FoldStepWeights' transposed copy dt_proj_stepRing [D, R] (a row reduction on a GPU) rather
// than down the columns of W_dt [R, D].
func mambaDelta(ctx *context.Context, cfg Config, in stepInput, w mambaWeights, dt *Node) *Node {
	var p *Node
	if cfg.stepFuses("dtrow") && in.rowwise() {
		D, R := cfg.Inner(), cfg.Rank()
		v := ctx.InspectVariableIfLoaded(ctx.Scope(), "dt_proj"+stepRingSuffix)
		if v == nil || !slices.Equal(v.Shape().Dimensions, []int{D, R}) {
			panic(fmt.Sprintf("bm: decoding step: step_fuse dtrow needs %s/dt_proj%s [%d, %d] (FoldStepWeights)", ctx.Scope(), stepRingSuffix, D, R))
		}
		p, _ = stepRowProduct(dt, v.ValueGraph(dt.Graph()), false, nil)
	} else {
		p = StepProduct(cfg, dt, w.dtProj)
	}
	return Softplus(Add(p, ExpandLeftToRank(w.dtBias, 2)))
}

// mambaWideSelect is mambaSelect for a "wide" ring state of C columns (Config.StepFuse "wide"):
// Δ [B, D], and A [D, C], B and C [B, C] with zeros in the ring's and the padding's columns,
// from FoldStepWeights' copies x_proj_stepRing [R+2C, D] (x_proj's rows for δ, then its rows for
// B and for C, each set placed at columns K … K+N−1 of C rows, zero rows elsewhere) and
// A_stepRing [D, C] (−exp(A_log) at the same columns).
func mambaWideSelect(ctx *context.Context, cfg Config, in stepInput, w mambaWeights, xc *Node, C int) (delta, aFull, bFull, cFull *Node) {
	g := in.graph()
	D, R := cfg.Inner(), cfg.Rank()
	xv := ctx.InspectVariableIfLoaded(ctx.Scope(), "x_proj"+stepRingSuffix)
	av := ctx.InspectVariableIfLoaded(ctx.Scope(), "A"+stepRingSuffix)
	if xv == nil || av == nil || !slices.Equal(xv.Shape().Dimensions, []int{R + 2*C, D}) || !slices.Equal(av.Shape().Dimensions, []int{D, C}) {
		panic(fmt.Sprintf("bm: decoding step: step_fuse wide needs %s/x_proj%s [%d, %d] and A%s [%d, %d] (FoldStepWeights)", ctx.Scope(), stepRingSuffix, R+2*C, D, stepRingSuffix, D, C))
	}
	xw := xv.ValueGraph(g)
	var xdbl *Node
	if in.rowwise() {
		xdbl, _ = stepRowProduct(xc, xw, false, nil)
	} else {
		xdbl = stepEinsum(cfg, "bd,ed->be", xc, xw)
	}
	delta = mambaDelta(ctx, cfg, in, w, SliceAxis(xdbl, -1, AxisRange(0, R)))
	return delta, av.ValueGraph(g), SliceAxis(xdbl, -1, AxisRange(R, R+C)), SliceAxis(xdbl, -1, AxisRange(R+C, R+2*C))
}

// mambaOutProj is a step's out_proj of the gated output y [B, D] (with rf's router rows when rf
// is not nil).
func mambaOutProj(ctx *context.Context, cfg Config, in stepInput, y *Node, rf *routerFold) *Node {
	D, d := cfg.Inner(), cfg.Dim
	if rf != nil {
		return rf.outProj(cfg, in, y, d)
	}
	return in.product(ctx, cfg, "out_proj", true, y, D, d)
}

// scanMaxBatch is the ScanOptions.MaxBatch of cfg.ScanMaxTokens for sequences of T tokens: 0
// (no split) when it is unset, else as many whole sequences as fit, at least one.
func scanMaxBatch(cfg Config, T int) int {
	if cfg.ScanMaxTokens <= 0 {
		return 0
	}
	return max(1, cfg.ScanMaxTokens/T)
}
