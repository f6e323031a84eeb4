package bm

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Inference with low-precision weights. Training keeps float32 master weights and converts
// matmul operands to the compute dtype inside the graph (ComputeEinsum); for generation the
// conversion would read every float32 weight and write a bfloat16 copy at each step, twice the
// bytes of reading bfloat16 weights, and decoding at batch 1 is bound by reading weights.
// CastWeights stores the matmul weights in the compute dtype once, and the blocks use such a
// variable as it is (see weightVar and embeddingTable).

// castNames are the variables CastWeights converts: the matmul weights of every block kind.
// The router, the Mamba dt projection, A_log, D, the conv, the norms and the biases stay
// float32. The tied embedding stays float32 too (its rows enter the float32 residual stream)
// and gets a copy in the compute dtype, headCopyName, for the output head.
var castNames = []string{"in_proj", "x_proj", "out_proj", "fc1", "fc2", "wq", "wk", "wv", "wo"}

// headCopyName is the variable, beside the embedding, holding its copy for the head.
const headCopyName = "weight_head"

// IsCastWeight reports whether the variable scope/name is a block matmul weight that
// CastWeights converts.
func IsCastWeight(scope, name string) bool {
	return strings.Contains(scope, "/mixer") && slices.Contains(castNames, name)
}

// CastWeights converts, on the backend, the matmul weights of the model in ctx to dtype
// (normally the config's ComputeDType, "bfloat16") for inference, and adds the head's copy of
// the embedding in dtype. The model's outputs do not change: the blocks and the head used
// operands of that dtype already. Variables must already exist (InitWeights, or loaded
// weights). It returns how many variables were converted or added. Do not train a context
// after CastWeights: its weights lost precision.
func CastWeights(backend backends.Backend, ctx *context.Context, dtype dtypes.DType) (int, error) {
	convert, err := NewExec(backend, func(x *Node) *Node { return ConvertDType(x, dtype) })
	if err != nil {
		return 0, err
	}
	convert.SetMaxCache(-1)
	n := 0
	var emb *context.Variable
	for v := range ctx.IterVariables() {
		if v.Scope() == "/embedding/word_embeddings" && v.Name() == "weight" {
			emb = v
		}
		if !IsCastWeight(v.Scope(), v.Name()) || v.Shape().DType == dtype {
			continue
		}
		val, err := v.Value()
		if err != nil {
			return n, fmt.Errorf("bm.CastWeights: reading %s: %w", v.ScopeAndName(), err)
		}
		outs, err := convert.Exec(val)
		if err != nil {
			return n, fmt.Errorf("bm.CastWeights: converting %s: %w", v.ScopeAndName(), err)
		}
		if err := v.SetValue(outs[0]); err != nil {
			return n, fmt.Errorf("bm.CastWeights: %s: %w", v.ScopeAndName(), err)
		}
		val.FinalizeAll()
		n++
	}
	if emb != nil {
		val, err := emb.Value()
		if err != nil {
			return n, fmt.Errorf("bm.CastWeights: reading the embedding: %w", err)
		}
		outs, err := convert.Exec(val)
		if err != nil {
			return n, fmt.Errorf("bm.CastWeights: converting the embedding: %w", err)
		}
		ctx.InAbsPath("/embedding/word_embeddings").Checked(false).
			VariableWithValue(headCopyName, outs[0]).SetTrainable(false)
		n++
	}
	return n, nil
}

// castVariable returns the variable name of ctx's scope if it exists with the given dimensions
// and a dtype other than float32 (a CastWeights copy), else nil.
func castVariable(ctx *context.Context, name string, dims ...int) *context.Variable {
	v := ctx.InspectVariableIfLoaded(ctx.Scope(), name)
	if v == nil || v.Shape().DType == dtypes.Float32 || !slices.Equal(v.Shape().Dimensions, dims) {
		return nil
	}
	return v
}

// embed gathers the embedding rows of ids [...] from emb [V, d] and returns them in float32
// (the residual stream's dtype), whatever the table's dtype.
func embed(emb, ids *Node) *Node {
	return ConvertDType(Gather(emb, InsertAxes(ids, -1)), dtypes.Float32)
}

// InitWeights creates and initialises every variable of the model cfg in ctx (those already
// there are kept): it builds the forward pass on a single token, which creates the variables,
// without compiling or running it, and runs the variables' initialisers
// (Context.InitializeVariables) in the order the forward creates them, so the values are those
// a first forward call would have drawn. The initialisers run in groups of
// ParamInitBlocks blocks (default DefaultInitBlocks; 0 or less: all in one graph), each
// group's graph compiled and run as soon as the forward has built its blocks: the values are
// the same whatever the grouping (the random state passes from one group to the next), and on
// a GPU one graph for a deep model compiled for minutes.
func InitWeights(backend backends.Backend, ctx *context.Context, cfg Config) (err error) {
	m, err := New(cfg)
	if err != nil {
		return err
	}
	group := context.GetParamOr(ctx, ParamInitBlocks, DefaultInitBlocks)
	g := NewGraph(backend, "bm.InitWeights")
	defer g.Finalize()
	stage := "building the forward graph"
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bm.InitWeights: %s: %v", stage, r)
		}
	}()
	opts := ForwardOptions{}
	if group > 0 {
		opts.AfterBlock = func(i int) {
			if (i+1)%group == 0 {
				if err := ctx.InitializeVariables(backend, nil); err != nil {
					stage = fmt.Sprintf("initialising the variables up to block %d", i)
					panic(err)
				}
			}
		}
	}
	tokens := Parameter(g, "tokens", shapes.Make(dtypes.Int32, 1, 1))
	m.Forward(ctx.Checked(false), tokens, opts)
	if err := ctx.InitializeVariables(backend, nil); err != nil {
		return fmt.Errorf("bm.InitWeights: %w", err)
	}
	return nil
}

// ParamInitBlocks is the context parameter (int) of InitWeights: the number of blocks whose
// variables are initialised by one graph; 0 or less initialises every variable in one graph.
const ParamInitBlocks = "bm_init_blocks"

// DefaultInitBlocks is InitWeights' default ParamInitBlocks.
const DefaultInitBlocks = 4

// stepTSuffix ends the name of the transposed copy of a block matmul weight made by
// TransposeStepWeights; stepTNSuffix that of a transposed copy with the gain of the block's
// norm folded in (foldedNames).
const (
	stepTSuffix  = "_stepT"
	stepTNSuffix = "_stepTN"
	// stepRouterSuffix ends the names of FoldStepWeights' copies of a Mamba block's in_proj and
	// out_proj when an MoE block follows it, with that block's router rows below their own
	// (makeRouterCopies, Config.StepFuse "router").
	stepRouterSuffix = "_stepRouter"
	// stepRingSuffix ends the names of FoldStepWeights' copies of a Mamba block's x_proj and A
	// for a "wide" ring state (makeRingCopies, Config.StepFuse "wide"), and of its dt_proj
	// transposed (Config.StepFuse "dtrow").
	stepRingSuffix = "_stepRing"
)

// foldedNames are the weights whose products take a block's normed input, the first products
// of every block kind (firstProducts): FoldStepWeights' copies of them carry the norm's gain,
// so that the step can multiply them by the residual over its rms (stepInput). The router
// stays float32; only FoldStepWeights copies it.
var foldedNames = func() []string {
	var names []string
	for _, kind := range []byte{KindMamba, KindAttention, KindMLP, KindMoE} {
		for _, name := range firstProducts(kind) {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	return names
}()

// StepLayout names the weights a decoding step reads.
type StepLayout string

const (
	// StepInOut: the model's own weights, [in, out].
	StepInOut StepLayout = "inout"
	// StepTransposed: [out, in] copies of the block matmul weights (TransposeStepWeights).
	StepTransposed StepLayout = "transposed"
	// StepFolded: the transposed copies, those of each block's first products with the block's
	// norm gain folded in, and a transposed copy of each router (FoldStepWeights).
	StepFolded StepLayout = "folded"
)

// StepLayouts lists the layouts, for messages.
var StepLayouts = []StepLayout{StepInOut, StepTransposed, StepFolded}

// ParseStepLayout returns the layout named s, or an error naming s and the layouts.
func ParseStepLayout(s string) (StepLayout, error) {
	for _, l := range StepLayouts {
		if string(l) == s {
			return l, nil
		}
	}
	return "", fmt.Errorf("step weights %q: want inout, transposed or folded", s)
}

// SetStepLayout gives the decoding steps of models in ctx the weights of layout: it removes the
// copies of another layout (DropStepWeights) and makes those of layout (TransposeStepWeights,
// FoldStepWeights). It returns how many copies it added. Graphs already built keep the
// variables they were built with: call it before creating decoders.
func SetStepLayout(backend backends.Backend, ctx *context.Context, layout StepLayout) (int, error) {
	if _, err := ParseStepLayout(string(layout)); err != nil {
		return 0, fmt.Errorf("bm.SetStepLayout: %w", err)
	}
	if current := StepLayoutOf(ctx); current != layout && current != StepInOut {
		if _, err := DropStepWeights(ctx); err != nil {
			return 0, err
		}
	}
	switch layout {
	case StepTransposed:
		return TransposeStepWeights(backend, ctx)
	case StepFolded:
		return FoldStepWeights(backend, ctx)
	}
	return 0, nil
}

// StepLayoutOf returns the layout of the step copies ctx holds: StepFolded when it holds a
// gain-folded copy, StepTransposed when it holds only plain transposed copies, else StepInOut.
func StepLayoutOf(ctx *context.Context) StepLayout {
	layout := StepInOut
	for v := range ctx.IterVariables() {
		switch {
		case strings.HasSuffix(v.Name(), stepTNSuffix):
			return StepFolded
		case strings.HasSuffix(v.Name(), stepTSuffix):
			layout = StepTransposed
		}
	}
	return layout
}

// TransposeStepWeights adds to ctx, beside each block matmul weight (IsCastWeight: [in, out],
// or [E, in, out] for the experts), a copy with its last two axes swapped, in the weight's
// dtype, and returns how many it added (copies already present are kept). The products of a
// decoding step (a token's row against a weight) then read the copy, so that each output
// element is a sum along a contiguous row of memory: a row reduction on a GPU, where the
// [in, out] layout makes XLA emit a column reduction, which it spreads over few thread blocks
// for these shapes. The values are the same up to summation order. The prefill and training
// paths do not use the copies. Call it after CastWeights (the copies keep the dtype the weights
// have when it runs) and before creating the decoders that should read the copies (a graph
// already built keeps the variables it was built with); the copies take as much device memory
// as the weights they copy. DropStepWeights removes them.
func TransposeStepWeights(backend backends.Backend, ctx *context.Context) (int, error) {
	return makeStepCopies(backend, ctx, false)
}

// FoldStepWeights is TransposeStepWeights, except that the copies of each block's first
// products (foldedNames: the Mamba in_proj, the MoE router and fc1, the MLP fc1, the attention
// wq, wk and wv; the router, which TransposeStepWeights leaves alone, in float32) are also
// multiplied along their input axis by the gain of the block's RMSNorm (in float32, then
// stored in the weight's dtype). The step then takes those products of the residual divided by
// its rms, without the gain, u·W = (x/rms(x))·(gain⊙W): a product with one value per row that
// the compiler can fuse into the reductions reading it, where the normalisation (a division per
// element, then the gain) was written to memory by a kernel of its own before them, and the
// router becomes a row reduction too. The values are the same up to rounding and summation
// order. The copies hold the norm gains of the time of the call. At batch 1 the step goes
// further (stepInput.rowwise): every product with a copy is a float32 row reduction of the raw
// residual or activation, scaled by 1/rms afterwards where the gain was folded in, and the
// block's first product also sums the residual's squares for that 1/rms, so that the norm takes
// no kernel of its own.
func FoldStepWeights(backend backends.Backend, ctx *context.Context) (int, error) {
	return makeStepCopies(backend, ctx, true)
}

// makeStepCopies makes the copies of TransposeStepWeights, or of FoldStepWeights when fold is
// set.
func makeStepCopies(backend backends.Backend, ctx *context.Context, fold bool) (int, error) {
	name := "bm.TransposeStepWeights"
	if fold {
		name = "bm.FoldStepWeights"
	}
	transpose, err := NewExec(backend, func(x *Node) *Node { return Transpose(x, -2, -1) })
	if err != nil {
		return 0, err
	}
	transpose.SetMaxCache(-1)
	defer transpose.Finalize()
	// [..., in, out] weight, [in] gain -> [..., out, in]·gain in the weight's dtype.
	foldGain, err := NewExec(backend, func(w, gain *Node) *Node {
		t := Mul(ConvertDType(Transpose(w, -2, -1), dtypes.Float32), ExpandLeftToRank(gain, w.Rank()))
		return ConvertDType(t, w.DType())
	})
	if err != nil {
		return 0, err
	}
	foldGain.SetMaxCache(-1)
	defer foldGain.Finalize()
	n := 0
	for _, v := range stepWeightVariables(ctx, fold) {
		scope := ctx.InAbsPath(v.Scope()).Checked(false)
		var gain *context.Variable
		suffix := stepTSuffix
		if fold && slices.Contains(foldedNames, v.Name()) {
			suffix = stepTNSuffix
			normScope := strings.TrimSuffix(v.Scope(), "/mixer") + "/norm"
			if gain = ctx.InspectVariableIfLoaded(normScope, "weight"); gain == nil || !strings.HasSuffix(v.Scope(), "/mixer") {
				return n, fmt.Errorf("%s: %s has no norm gain %s/weight to fold in", name, v.ScopeAndName(), normScope)
			}
		}
		if scope.InspectVariableIfLoaded(v.Scope(), v.Name()+suffix) != nil {
			continue
		}
		val, err := v.Value()
		if err != nil {
			return n, fmt.Errorf("%s: reading %s: %w", name, v.ScopeAndName(), err)
		}
		var outs []*tensors.Tensor
		if gain != nil {
			gv, err := gain.Value()
			if err != nil {
				return n, fmt.Errorf("%s: reading %s: %w", name, gain.ScopeAndName(), err)
			}
			if gv.Rank() != 1 || gv.Shape().Dim(0) != v.Shape().Dim(-2) {
				return n, fmt.Errorf("%s: norm gain %s is %s, want [%d] for %s %s", name, gain.ScopeAndName(), gv.Shape(), v.Shape().Dim(-2), v.ScopeAndName(), v.Shape())
			}
			if outs, err = foldGain.Exec(val, gv); err != nil {
				return n, fmt.Errorf("%s: folding %s into %s: %w", name, gain.ScopeAndName(), v.ScopeAndName(), err)
			}
		} else if outs, err = transpose.Exec(val); err != nil {
			return n, fmt.Errorf("%s: transposing %s: %w", name, v.ScopeAndName(), err)
		}
		scope.VariableWithValue(v.Name()+suffix, outs[0]).SetTrainable(false)
		n++
	}
	if fold {
		m, err := makeRouterCopies(backend, ctx)
		n += m
		if err != nil {
			return n, fmt.Errorf("%s: %w", name, err)
		}
		m, err = makeRingCopies(backend, ctx)
		n += m
		if err != nil {
			return n, fmt.Errorf("%s: %w", name, err)
		}
	}
	return n, nil
}

// makeRouterCopies adds, to each Mamba block followed by an MoE block, the two copies a batch-1
// step with Config.StepFuse "router" reads in place of its in_proj and out_proj copies, each
// with the router's rows below the block's own, in that copy's dtype: in_proj with the router
// rows [2D+E, d] (its gain-folded copy [2D, d], then the MoE block's gain-folded router copy
// [E, d]) and out_proj with the router rows [d+E, D] (its transposed copy [d, D], then the
// router copy times that copy, Rg·W_outᵀ, computed in float32). So the step's products read one
// weight each, with no concatenation in the step. It returns how many it added (copies present
// are kept).
func makeRouterCopies(backend backends.Backend, ctx *context.Context) (int, error) {
	var routers []*context.Variable
	for v := range ctx.IterVariables() {
		if v.Name() == "router_weight"+stepTNSuffix && strings.HasSuffix(v.Scope(), "/mixer") {
			routers = append(routers, v)
		}
	}
	var exec *Exec
	n := 0
	for _, v := range routers {
		layers, idx, ok := strings.Cut(strings.TrimSuffix(v.Scope(), "/mixer"), "/layers/")
		i, err := strconv.Atoi(idx)
		if !ok || err != nil || i == 0 {
			continue
		}
		prev := fmt.Sprintf("%s/layers/%d/mixer", layers, i-1)
		outT := ctx.InspectVariableIfLoaded(prev, "out_proj"+stepTSuffix)
		inTN := ctx.InspectVariableIfLoaded(prev, "in_proj"+stepTNSuffix)
		if outT == nil || inTN == nil || ctx.InspectVariableIfLoaded(prev, "out_proj"+stepRouterSuffix) != nil {
			continue // not after a Mamba block, or done already
		}
		if outT.Shape().Rank() != 2 || v.Shape().Rank() != 2 || outT.Shape().Dim(0) != v.Shape().Dim(1) ||
			inTN.Shape().Rank() != 2 || inTN.Shape().Dim(1) != v.Shape().Dim(1) {
			return n, fmt.Errorf("router copy %s %s does not fit %s/out_proj%s %s and in_proj%s %s", v.ScopeAndName(), v.Shape(), prev, stepTSuffix, outT.Shape(), stepTNSuffix, inTN.Shape())
		}
		if exec == nil {
			if exec, err = NewExec(backend, func(rt, ot, it *Node) (inR, outR *Node) {
				ro := Einsum("ed,dk->ek", ConvertDType(rt, dtypes.Float32), ConvertDType(ot, dtypes.Float32))
				outR = Concatenate([]*Node{ot, ConvertDType(ro, ot.DType())}, 0)
				inR = Concatenate([]*Node{it, ConvertDType(rt, it.DType())}, 0)
				return inR, outR
			}); err != nil {
				return n, err
			}
			exec.SetMaxCache(-1)
			defer exec.Finalize()
		}
		vals, err := variableValues(v, outT, inTN)
		if err != nil {
			return n, err
		}
		outs, err := exec.Exec(vals...)
		if err != nil {
			return n, fmt.Errorf("router copies of %s: %w", v.ScopeAndName(), err)
		}
		scope := ctx.InAbsPath(prev).Checked(false)
		scope.VariableWithValue("in_proj"+stepRouterSuffix, outs[0]).SetTrainable(false)
		scope.VariableWithValue("out_proj"+stepRouterSuffix, outs[1]).SetTrainable(false)
		n += 2
	}
	return n, nil
}

// variableValues returns the values of vs, as arguments of an Exec.
func variableValues(vs ...*context.Variable) ([]any, error) {
	vals := make([]any, len(vs))
	for i, v := range vs {
		t, err := v.Value()
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", v.ScopeAndName(), err)
		}
		vals[i] = t
	}
	return vals, nil
}

// makeRingCopies adds to each Mamba block with a transposed x_proj copy the two copies its step
// reads with a "wide" ring state of C = ringWidth(K, N) columns (mambaWideSelect): x_proj's
// transposed copy with its B rows and its C rows each moved to rows K … K+N−1 of a block of C
// rows (zero rows elsewhere), [R+2C, D] in that copy's dtype, and A = −exp(A_log) with its
// columns at K … K+N−1 of C, [D, C] float32; and dt_proj transposed, [D, R] float32, which
// "dtrow" reads. It returns how many it added (copies present are kept).
func makeRingCopies(backend backends.Backend, ctx *context.Context) (int, error) {
	execs := map[[4]int]*Exec{} // by K, N, R, D
	defer func() {
		for _, e := range execs {
			e.Finalize()
		}
	}()
	n := 0
	for v := range ctx.IterVariables() {
		if v.Name() != "x_proj"+stepTSuffix || !strings.HasSuffix(v.Scope(), "/mixer") {
			continue
		}
		aLog := ctx.InspectVariableIfLoaded(v.Scope(), "A_log")
		conv := ctx.InspectVariableIfLoaded(v.Scope(), "conv1d_weight")
		dtProj := ctx.InspectVariableIfLoaded(v.Scope(), "dt_proj")
		if aLog == nil || conv == nil || dtProj == nil || ctx.InspectVariableIfLoaded(v.Scope(), "x_proj"+stepRingSuffix) != nil {
			continue
		}
		K, D, N := conv.Shape().Dim(0), aLog.Shape().Dim(0), aLog.Shape().Dim(1)
		R := v.Shape().Dim(0) - 2*N
		if v.Shape().Rank() != 2 || v.Shape().Dim(1) != D || R < 1 {
			return n, fmt.Errorf("ring copies: %s %s does not fit A_log %s", v.ScopeAndName(), v.Shape(), aLog.Shape())
		}
		if !slices.Equal(dtProj.Shape().Dimensions, []int{R, D}) {
			return n, fmt.Errorf("ring copies: %s %s does not fit x_proj %s (want [%d, %d])", dtProj.ScopeAndName(), dtProj.Shape(), v.Shape(), R, D)
		}
		key := [4]int{K, N, R, D}
		exec := execs[key]
		if exec == nil {
			C := ringWidth(K, N)
			var err error
			exec, err = NewExec(backend, func(xt, al, dp *Node) (xr, ar, dr *Node) {
				g := xt.Graph()
				// zeros(K), then the N values from `from`, then zeros up to C, along axis.
				place := func(x *Node, from, axis int) *Node {
					zeros := func(k int) *Node {
						dims := x.Shape().Clone().Dimensions
						dims[axis] = k
						return Zeros(g, shapes.Make(x.DType(), dims...))
					}
					parts := []*Node{zeros(K), SliceAxis(x, axis, AxisRange(from, from+N))}
					if C > K+N {
						parts = append(parts, zeros(C-K-N))
					}
					return Concatenate(parts, axis)
				}
				xr = Concatenate([]*Node{SliceAxis(xt, 0, AxisRange(0, R)), place(xt, R, 0), place(xt, R+N, 0)}, 0)
				return xr, place(Neg(Exp(ConvertDType(al, dtypes.Float32))), 0, 1), ConvertDType(Transpose(dp, 0, 1), dtypes.Float32)
			})
			if err != nil {
				return n, err
			}
			exec.SetMaxCache(-1)
			execs[key] = exec
		}
		vals, err := variableValues(v, aLog, dtProj)
		if err != nil {
			return n, err
		}
		outs, err := exec.Exec(vals...)
		if err != nil {
			return n, fmt.Errorf("ring copies of %s: %w", v.ScopeAndName(), err)
		}
		scope := ctx.InAbsPath(v.Scope()).Checked(false)
		scope.VariableWithValue("x_proj"+stepRingSuffix, outs[0]).SetTrainable(false)
		scope.VariableWithValue("A"+stepRingSuffix, outs[1]).SetTrainable(false)
		scope.VariableWithValue("dt_proj"+stepRingSuffix, outs[2]).SetTrainable(false)
		n += 3
	}
	return n, nil
}

// isStepWeight reports whether scope/name is a weight FoldStepWeights copies: a block
// matmul weight (IsCastWeight) or a router weight.
func isStepWeight(scope, name string) bool {
	return IsCastWeight(scope, name) || (strings.Contains(scope, "/mixer") && name == "router_weight")
}

// stepWeightVariables returns the variables TransposeStepWeights copies, the block matmul
// weights of ctx (IsCastWeight), [in, out] or [E, in, out], and with withRouters also the
// routers' weights [d, E], which FoldStepWeights copies too.
func stepWeightVariables(ctx *context.Context, withRouters bool) []*context.Variable {
	var weights []*context.Variable
	for v := range ctx.IterVariables() {
		copied := IsCastWeight(v.Scope(), v.Name())
		if withRouters {
			copied = isStepWeight(v.Scope(), v.Name())
		}
		if copied && v.Shape().Rank() >= 2 {
			weights = append(weights, v)
		}
	}
	return weights
}

// stepTransposed returns the value in g of the copy of weight name (in ctx's scope) made by
// TransposeStepWeights if it exists with the given dimensions (the weight's with the last two
// swapped), else nil. It looks for the plain transposed copy, or for the copy with the norm's
// gain folded in when folded is set.
func stepTransposed(ctx *context.Context, g *Graph, name string, folded bool, dims ...int) *Node {
	suffix := stepTSuffix
	if folded {
		suffix = stepTNSuffix
	}
	v := ctx.InspectVariableIfLoaded(ctx.Scope(), name+suffix)
	if v == nil || !slices.Equal(v.Shape().Dimensions, dims) {
		return nil
	}
	return v.ValueGraph(g)
}

// stepMatmulVar is x·W for a decoding step, x [B, in] and W [in, out] the weight name of ctx's
// scope → [B, out] float32: from W's transposed copy (TransposeStepWeights) when ctx holds one,
// and then without reading W itself (the step's executable does not take it as an argument),
// else StepProduct with W (weightVar, which creates it if missing; outProj as there). Rows are
// padded to cfg.StepRows either way.
func stepMatmulVar(ctx *context.Context, cfg Config, name string, outProj bool, x *Node, in, out int) *Node {
	g := x.Graph()
	if wt := stepTransposed(ctx, g, name, false, out, in); wt != nil {
		return stepEinsum(cfg, "bd,ed->be", x, wt)
	}
	return StepProduct(cfg, x, weightVar(ctx, g, cfg, name, outProj, in, out))
}

// stepInput is the input of a block's decoding step. Either u, the token's row after the
// block's RMSNorm, or, when the block's first products (foldedNames) read copies with the
// norm's gain folded in (FoldStepWeights), the raw residual x [B, d] float32, with
// u = x·invRMS·gain and invRMS = 1/sqrt(mean(x²) + eps) held by norm.
type stepInput struct {
	u, x *Node
	norm *stepNorm
	// deferResidual leaves the residual add of a block that would add it inside its last
	// product (addsResidual) to the next block, whose products take the sum as their input
	// and whose last product adds it: Config.StepFuse "ring" sets it on a Mamba block followed
	// by an MoE block, so that nothing is appended to the Mamba output's sum.
	deferResidual bool
}

// stepNorm holds the 1/rms [B, 1] of a folded stepInput once known. At batch 1 the first
// product of the block computes it (stepRowProduct's extra row), so that the norm takes no
// kernel of its own; at larger batches foldedStepInput computes it up front.
type stepNorm struct{ invRMS *Node }

// firstProducts returns the weights of a block kind whose products take the block's normed
// input.
func firstProducts(kind byte) []string {
	switch kind {
	case KindMamba:
		return []string{"in_proj"}
	case KindAttention:
		return []string{"wq", "wk", "wv"}
	case KindMLP:
		return []string{"fc1"}
	}
	return []string{"router_weight", "fc1"} // MoE
}

// normedStepInput returns the stepInput of a block with u given.
func normedStepInput(u *Node) stepInput { return stepInput{u: u} }

// foldedStepInput returns the stepInput of the block in mctx (its mixer scope) for the residual
// x [B, d] float32 when every weight of names has its gain-folded copy in mctx, else ok false.
func foldedStepInput(mctx *context.Context, cfg Config, x *Node, names ...string) (in stepInput, ok bool) {
	for _, name := range names {
		if mctx.InspectVariableIfLoaded(mctx.Scope(), name+stepTNSuffix) == nil {
			return in, false
		}
	}
	in = stepInput{x: x, norm: &stepNorm{}}
	if !in.rowwise() {
		ms := ReduceAndKeep(Square(x), ReduceMean, -1)
		in.norm.invRMS = Rsqrt(AddScalar(ms, cfg.NormEps))
	}
	return in, true
}

// row returns the node the input holds: the raw residual x when folded, else u.
func (in stepInput) row() *Node {
	if in.folded() {
		return in.x
	}
	return in.u
}

// batch returns the number of rows of the input.
func (in stepInput) batch() int { return in.row().Shape().Dim(0) }

// graph returns the graph of the input.
func (in stepInput) graph() *Graph { return in.row().Graph() }

// folded reports whether the input is the raw residual with the norm's scale.
func (in stepInput) folded() bool { return in.u == nil }

// rowwise reports whether the folded input's products are stepRowProducts of the raw residual,
// scaled by 1/rms afterwards: at batch 1 (cfg.StepRows does not apply to them). Larger batches
// take matmuls of x·invRMS, which read each weight once for all rows.
func (in stepInput) rowwise() bool { return in.folded() && in.batch() == 1 }

// project is the step's product of the block input with the first-product weight name [in,
// out] of ctx's scope → [B, out] float32: stepMatmulVar of u, or from the gain-folded copy.
func (in stepInput) project(ctx *context.Context, cfg Config, name string, inDim, outDim int) *Node {
	if !in.folded() {
		return stepMatmulVar(ctx, cfg, name, false, in.u, inDim, outDim)
	}
	wt := stepTransposed(ctx, in.x.Graph(), name, true, outDim, inDim)
	if wt == nil {
		panic(fmt.Sprintf("bm: decoding step: %s%s is missing or not [%d, %d]", name, stepTNSuffix, outDim, inDim))
	}
	if !in.rowwise() {
		return stepEinsum(cfg, "bd,ed->be", in.scaled(), wt)
	}
	return in.rowProduct(cfg, wt)
}

// product is the step's product of x [B, in] float32, an activation of the block, with the
// weight name [in, out] of ctx's scope (not a first product) → [B, out] float32: a
// stepRowProduct with the weight's transposed copy when the block's input is rowwise, else
// stepMatmulVar. The block's output projection (outProj) returns the new residual, the
// product plus the block's input, when the input addsResidual.
func (in stepInput) product(ctx *context.Context, cfg Config, name string, outProj bool, x *Node, inDim, outDim int) *Node {
	if in.rowwise() {
		if wt := stepTransposed(ctx, x.Graph(), name, false, outDim, inDim); wt != nil {
			var add *Node
			if outProj && in.addsResidual(cfg) {
				add = in.x
			}
			p, _ := stepRowProductPadded(x, wt, false, add, residualPad(cfg, inDim))
			return p
		}
		if outProj && in.addsResidual(cfg) {
			panic(fmt.Sprintf("bm: decoding step: %s%s is missing or not [%d, %d], which step_fuse residual needs (FoldStepWeights)", name, stepTSuffix, outDim, inDim))
		}
	}
	return stepMatmulVar(ctx, cfg, name, outProj, x, inDim, outDim)
}

// addsResidual reports whether the block's step returns the new residual (its output plus the
// block's input, added inside its last product: cfg.StepFuse "residual") rather than its
// output: for rowwise inputs.
func (in stepInput) addsResidual(cfg Config) bool {
	return in.rowwise() && cfg.stepFuses("residual") && !in.deferResidual
}

// residualPad is the number of zero columns a product that adds the residual (the extra column
// of stepRowProduct) appends after it for rows of inDim weights: with Config.StepFuse "align"
// enough for a row length of inDim+1+pad that is a multiple of 8, else none.
func residualPad(cfg Config, inDim int) int {
	if !cfg.stepFuses("align") {
		return 0
	}
	return (8 - (inDim+1)%8) % 8
}

// rowProduct is the product of a folded input at batch 1 with wt [out, in] (a gain-folded copy,
// or [B, out, in] gathered from one) → [B, out] float32, times 1/rms: by stepRowProduct, which
// also computes the 1/rms when no product of the block has yet.
func (in stepInput) rowProduct(cfg Config, wt *Node) *Node {
	return Mul(in.rawRowProduct(cfg, wt), in.norm.invRMS)
}

// rawRowProduct is rowProduct without the 1/rms factor, which it sets when no product of the
// block has yet (from one more row of the same reduction).
func (in stepInput) rawRowProduct(cfg Config, wt *Node) *Node {
	if in.norm.invRMS != nil {
		p, _ := stepRowProduct(in.x, wt, false, nil)
		return p
	}
	p, squares := stepRowProduct(in.x, wt, true, nil)
	in.setNormFromSquares(cfg, squares)
	return p
}

// setNormFromSquares sets the input's 1/rms from the sum of squares [B, 1] of its raw residual.
func (in stepInput) setNormFromSquares(cfg Config, squares *Node) {
	in.norm.invRMS = Rsqrt(AddScalar(DivScalar(squares, float64(in.x.Shape().Dim(1))), cfg.NormEps))
}

// stepRowProduct returns p [B, out], p[b, j] = Σ_k wt[(b,) j, k]·x[b, k] (+ add[b, j]) in
// float32, for x [B, in] (taken in float32), wt [out, in] or [B, out, in] in any dtype and add
// [B, out] float32 or nil, written as an elementwise product and a sum along wt's rows, a single
// row reduction on a GPU, with the dtype conversion inside it; add enters as one more column of
// wt against a column of ones in x. With squares set it also returns Σ_k x[b, k]² [B, 1], from
// one more row, x itself, in the same reduction: the norm's sum of squares without a kernel of
// its own (not with add).
func stepRowProduct(x, wt *Node, squares bool, add *Node) (p, sq *Node) {
	return stepRowProductPadded(x, wt, squares, add, 0)
}

// stepRowProductPadded is stepRowProduct with pad zero columns after add's column (in wt, and
// zeros in x against them): the same sums, over rows of in+1+pad elements (residualPad).
func stepRowProductPadded(x, wt *Node, squares bool, add *Node, pad int) (p, sq *Node) {
	numB, in := x.Shape().Dim(0), x.Shape().Dim(1)
	out := wt.Shape().Dim(-2)
	if wt.Shape().Dim(-1) != in || (wt.Rank() == 3 && wt.Shape().Dim(0) != numB) || wt.Rank() < 2 || wt.Rank() > 3 ||
		(add != nil && (squares || !slices.Equal(add.Shape().Dimensions, []int{numB, out}))) {
		panic(fmt.Sprintf("bm: step row product: want x [B, in], wt [out, in] or [B, out, in] and add [B, out] or nil (not with squares), got %s, %s and %v", x.Shape(), wt.Shape(), add))
	}
	w := ConvertDType(wt, dtypes.Float32)
	if w.Rank() == 2 {
		w = BroadcastToDims(InsertAxes(w, 0), numB, out, in)
	}
	xf := ConvertDType(x, dtypes.Float32)
	if add != nil {
		wParts := []*Node{w, InsertAxes(ConvertDType(add, dtypes.Float32), -1)} // [B, out, in+1]
		xParts := []*Node{xf, Ones(x.Graph(), shapes.Make(dtypes.Float32, numB, 1))}
		if pad > 0 {
			wParts = append(wParts, Zeros(x.Graph(), shapes.Make(dtypes.Float32, numB, out, pad)))
			xParts = append(xParts, Zeros(x.Graph(), shapes.Make(dtypes.Float32, numB, pad)))
		}
		w = Concatenate(wParts, 2)
		xf = Concatenate(xParts, 1)
	}
	xr := InsertAxes(xf, 1) // [B, 1, in(+1)]
	if squares {
		w = Concatenate([]*Node{w, xr}, 1) // [B, out+1, in]
	}
	s := ReduceSum(Mul(w, xr), -1) // [B, out(+1)]
	if !squares {
		return s, nil
	}
	return SliceAxis(s, 1, AxisRange(0, out)), SliceAxis(s, 1, AxisRange(out, out+1))
}

// scaled returns x·invRMS, the normed token without the gain, [B, d] float32: the operand of
// the gain-folded copies at batches above 1.
func (in stepInput) scaled() *Node { return Mul(in.x, in.norm.invRMS) }

// DropStepWeights removes from ctx the copies TransposeStepWeights or FoldStepWeights added,
// freeing their memory, so that decoding steps read the weights themselves again. It returns how
// many it removed.
func DropStepWeights(ctx *context.Context) (int, error) {
	var copies []*context.Variable
	for v := range ctx.IterVariables() {
		for _, suffix := range []string{stepTSuffix, stepTNSuffix, stepRouterSuffix, stepRingSuffix} {
			base, ok := strings.CutSuffix(v.Name(), suffix)
			// makeRingCopies' A and dt_proj, which are not step weights.
			ringExtra := suffix == stepRingSuffix && (base == "A" || base == "dt_proj") && strings.HasSuffix(v.Scope(), "/mixer")
			if ok && (isStepWeight(v.Scope(), base) || ringExtra) {
				copies = append(copies, v)
			}
		}
	}
	for i, v := range copies {
		if err := ctx.DeleteVariable(v.Scope(), v.Name()); err != nil {
			return i, fmt.Errorf("bm.DropStepWeights: %s: %w", v.ScopeAndName(), err)
		}
	}
	return len(copies), nil
}

// StepWeightBytes returns the bytes of the weights TransposeStepWeights would copy (the block
// matmul weights of ctx, at their current dtype): the extra memory the copies take.
// FoldStepWeights adds more: the routers' copies (float32 [E, d] each), a second copy of the
// in_proj and out_proj of each Mamba block followed by an MoE block (makeRouterCopies; about a
// tenth more for the BlackMamba presets) and the small ring copies of x_proj, A and dt_proj.
func StepWeightBytes(ctx *context.Context) int64 {
	var n int64
	for _, v := range stepWeightVariables(ctx, false) {
		n += int64(v.Shape().Memory())
	}
	return n
}
