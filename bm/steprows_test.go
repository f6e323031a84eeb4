package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/xla"
)

// TestStepProduct checks that padding the rows of a step product changes nothing: for batches
// of 1 to 3 rows and StepRows 0 to 4 (padding only where StepRows exceeds the batch), the
// result equals the unpadded product to 1e-6 relative, in float32. In bfloat16 on a compiling
// backend the two may differ by the rounding of the products besides: on a GPU a one-row product
// becomes an elementwise product in bfloat16 and a float32 reduction, and a padded one a matrix
// multiplication that accumulates the exact products in float32, so the bound is 2⁻⁸ of
// Σ_k |x_k·w_k| (each product rounded once) plus one bfloat16 unit of the result (both results
// rounded); on the pure-Go CPU backend they must be equal to 1e-6.
func TestStepProduct(t *testing.T) {
	backend := cpuBackend(t)
	rng := rand.New(rand.NewPCG(5, 6))
	const in, out = 24, 40
	w := make([]float32, in*out)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for _, dtype := range []string{"float32", "bfloat16"} {
		cfg := MustPreset("tiny")
		cfg.ComputeDType = dtype
		for B := 1; B <= 3; B++ {
			x := make([]float32, B*in)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			xt := tensors.FromFlatDataAndDimensions(x, B, in)
			wt := tensors.FromFlatDataAndDimensions(w, in, out)
			var want []float32
			for _, rows := range []int{0, 1, 2, 3, 4} {
				c := cfg
				c.StepRows = rows
				got := MustExecOnce(backend, func(x, w *Node) *Node { return StepProduct(c, x, w) }, xt, wt)
				if dims := got.Shape().Dimensions; !slices.Equal(dims, []int{B, out}) {
					t.Fatalf("%s B=%d rows=%d: result %v, want [%d %d]", dtype, B, rows, dims, B, out)
				}
				v := tensors.MustCopyFlatData[float32](got)
				if rows == 0 {
					want = v
					continue
				}
				scale := 0.0
				for _, f := range want {
					scale = math.Max(scale, math.Abs(float64(f)))
				}
				for i := range v {
					tol := 1e-6 * scale
					if dtype == "bfloat16" && !xla.IsPureGo(backend) {
						b, j := i/out, i%out
						abs := 0.0 // Σ_k |x_k·w_k| for this element
						for k := range in {
							abs += math.Abs(float64(x[b*in+k]) * float64(w[k*out+j]))
						}
						// One bfloat16 ulp is at most 2⁻⁷ of the value; a product's rounding at most 2⁻⁸ of it.
						tol += math.Abs(float64(want[i]))/128 + abs/256
					}
					if d := math.Abs(float64(v[i] - want[i])); d > tol {
						t.Fatalf("%s B=%d rows=%d: element %d is %g, unpadded %g", dtype, B, rows, i, v[i], want[i])
					}
				}
			}
		}
	}
}

// TestStepVariantsGreedyTokens checks that batch-1 greedy decoding with the step products padded
// to 2 rows, and with the steps reading the weights' transposed copies (TransposeStepWeights,
// after CastWeights to bfloat16 as the latency and bench commands do), gives exactly the tokens
// of the plain decoder, for the four small architectures, one step per call and unrolled. The
// folded layout's batch-1 products sum in float32 where the others round their inputs to
// bfloat16 first, so in bfloat16 its greedy tokens may part from the plain decoder's at a
// near tie; it is checked for the same tokens in float32 (also with Config.StepFuse
// "gate,residual", "router", "residual,router", "residual,ring", "residual,router,ring" and
// "residual,router,ring,head,align,dtrow,nodefer,wide"),
// and in bfloat16 by TestFoldedStepLogitsBF16. On a compiling backend (a GPU)
// the same holds for the padded rows in bfloat16: there the one-row product rounds each
// bfloat16 product before its float32 sum and the padded one is a matrix multiplication that
// does not (TestStepProduct bounds the difference), so the padded rows are checked for the
// plain decoder's tokens in float32 there, and in bfloat16 on the pure-Go backend.
func TestStepVariantsGreedyTokens(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen = 20
	// The folded variants with step fusions: their Config.StepFuse.
	foldedFuses := map[string]string{
		"folded-fused": "gate,residual", "folded-router": "router", "folded-all": "residual,router",
		"folded-ring": "residual,ring", "folded-ring-all": "residual,router,ring",
		"folded-ring-more": "residual,router,ring,head,align,dtrow,nodefer,wide",
	}
	for _, cfg := range DecodeCheckConfigs() {
		for _, unroll := range []int{1, 4} {
			for _, dtype := range []string{"bfloat16", "float32"} {
				t.Run(fmt.Sprintf("%s/unroll%d/%s", cfg.Name, unroll, dtype), func(t *testing.T) {
					variants := []string{"plain", "rows", "transposed"}
					if dtype == "float32" {
						variants = []string{"plain", "folded", "folded-fused", "folded-router", "folded-all", "folded-ring", "folded-ring-all", "folded-ring-more"}
					}
					if !xla.IsPureGo(backend) {
						if dtype == "float32" {
							variants = append(variants, "rows")
						} else {
							variants = []string{"plain", "transposed"}
						}
					}
					var want []int
					for _, variant := range variants {
						c := cfg
						c.ComputeDType = dtype
						if variant == "rows" {
							c.StepRows = 2
						}
						if fuse, ok := foldedFuses[variant]; ok {
							c.StepFuse, variant = fuse, "folded"
						}
						ctx := stepVariantContext(t, backend, c, variant)
						dec, err := NewDecoder(backend, ctx, c, 1, maxLen)
						if err != nil {
							t.Fatal(err)
						}
						g := NewGreedyDecoder(dec)
						g.Unroll = unroll
						got, err := g.GenerateGreedy([]int{3, 1, 4}, maxLen-3)
						g.Release()
						if err != nil {
							t.Fatal(err)
						}
						if variant == "plain" {
							want = got
						} else if !slices.Equal(got, want) {
							t.Errorf("%s: tokens %v, plain decoder %v", variant, got, want)
						}
					}
				})
			}
		}
	}
}

// stepVariantContext returns a context with cfg's weights (seed 4), cast to its compute dtype,
// and the step copies of variant ("transposed" or "folded"; none for the others).
func stepVariantContext(t *testing.T, backend backends.Backend, cfg Config, variant string) *context.Context {
	t.Helper()
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(4))
	if err := InitWeights(backend, ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := CastWeights(backend, ctx, ComputeDType(cfg)); err != nil {
		t.Fatal(err)
	}
	if variant == "transposed" || variant == "folded" {
		if _, err := SetStepLayout(backend, ctx, StepLayout(variant)); err != nil {
			t.Fatal(err)
		}
	}
	return ctx
}

// TestFoldedStepLogitsBF16 checks the folded layout's bfloat16 steps against the float32
// model: after the same prompt, the logits of several steps fed the same tokens (the float32
// decoder's greedy choices) are no further from the float32 logits than the plain bfloat16
// decoder's (their largest difference, with 10% slack), for the four small architectures. (On
// these random models the plain decoder's largest difference is 4 to 6% of the largest logit;
// the folded layout's, summing in float32, was 2 to 4%.)
func TestFoldedStepLogitsBF16(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen, steps = 20, 8
	for _, cfg := range DecodeCheckConfigs() {
		t.Run(cfg.Name, func(t *testing.T) {
			// logits returns the logits of each step, feeding tokens (nil: its own greedy
			// choices), and the tokens fed.
			run := func(dtype, variant string, tokens []int) ([][]float32, []int) {
				c := cfg
				c.ComputeDType = dtype
				dec, err := NewDecoder(backend, stepVariantContext(t, backend, c, variant), c, 1, maxLen)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := dec.Prefill([][]int{{3, 1, 4}}); err != nil {
					t.Fatal(err)
				}
				var all [][]float32
				next := 5
				var fed []int
				for i := range steps {
					if tokens != nil {
						next = tokens[i]
					}
					fed = append(fed, next)
					out, err := dec.Step([]int{next})
					if err != nil {
						t.Fatal(err)
					}
					v := tensors.MustCopyFlatData[float32](out)
					all = append(all, v)
					next = slices.Index(v, slices.Max(v))
				}
				return all, fed
			}
			ref, fed := run("float32", "plain", nil)
			plain, _ := run("bfloat16", "plain", fed)
			folded, _ := run("bfloat16", "folded", fed)
			var scale, plainErr, foldedErr float64
			for i := range ref {
				for j := range ref[i] {
					scale = math.Max(scale, math.Abs(float64(ref[i][j])))
					plainErr = math.Max(plainErr, math.Abs(float64(plain[i][j]-ref[i][j])))
					foldedErr = math.Max(foldedErr, math.Abs(float64(folded[i][j]-ref[i][j])))
				}
			}
			t.Logf("largest |logit| %.4g; bfloat16 against float32: plain %.3g, folded %.3g", scale, plainErr, foldedErr)
			if foldedErr > 1.1*plainErr {
				t.Errorf("folded bfloat16 logits differ from float32 by %.3g (largest |logit| %.4g; plain bfloat16 %.3g)", foldedErr, scale, plainErr)
			}
		})
	}
}

// TestStepWeightCopies checks the copies of TransposeStepWeights and FoldStepWeights (the norm
// gains set to random values first): one per block matmul weight, and for FoldStepWeights one
// per router weight, two router copies per Mamba block followed by an MoE block and two ring
// copies per Mamba block too (none for the norms or the embedding), each the transpose of its last
// two axes in the weight's dtype, and for FoldStepWeights' copies of the blocks' first products
// (foldedNames) that transpose times the block's norm gain along its input axis; none added by
// a second call. The step reads the copies and not the weights they replace; DropStepWeights
// removes them, and SetStepLayout switches between the layouts.
func TestStepWeightCopies(t *testing.T) {
	backend := cpuBackend(t)
	cfg := DecodeCheckConfigs()[0] // BlackMamba: Mamba and MoE blocks
	for _, layout := range []StepLayout{StepTransposed, StepFolded} {
		t.Run(string(layout), func(t *testing.T) {
			ctx := context.New()
			if err := InitWeights(backend, ctx, cfg); err != nil {
				t.Fatal(err)
			}
			randomizeNormGains(t, ctx, 3)
			fold := layout == StepFolded
			weights := map[string]*context.Variable{}
			for v := range ctx.IterVariables() {
				if IsCastWeight(v.Scope(), v.Name()) || (fold && v.Name() == "router_weight") {
					weights[v.ScopeAndName()] = v
				}
			}
			var bytes int64
			for _, w := range weights {
				if IsCastWeight(w.Scope(), w.Name()) {
					bytes += int64(w.Shape().Memory())
				}
			}
			if got := StepWeightBytes(ctx); got != bytes || bytes == 0 {
				t.Errorf("StepWeightBytes = %d, want %d", got, bytes)
			}
			if StepLayoutOf(ctx) != StepInOut {
				t.Errorf("before any copies: layout %q, want inout", StepLayoutOf(ctx))
			}
			// FoldStepWeights' router copies (makeRouterCopies, TestRouterCopies: in_proj and
			// out_proj with the router rows, two) and ring copies (makeRingCopies,
			// TestRingStatePadding: x_proj, A and dt_proj, three).
			extra := 0
			for i, b := range cfg.Blocks() {
				if fold && b.Kind == KindMamba && i+1 < len(cfg.Blocks()) && cfg.Blocks()[i+1].Kind == KindMoE {
					extra += 2
				}
				if fold && b.Kind == KindMamba {
					extra += 3
				}
			}
			n, err := SetStepLayout(backend, ctx, layout)
			if err != nil || n != len(weights)+extra || n == 0 {
				t.Fatalf("SetStepLayout(%s): %d copies, error %v; want %d", layout, n, err, len(weights)+extra)
			}
			if StepLayoutOf(ctx) != layout {
				t.Errorf("layout %q after SetStepLayout(%s)", StepLayoutOf(ctx), layout)
			}
			copyOf := func(w *context.Variable) (*context.Variable, []float32) {
				if !fold || !slices.Contains(foldedNames, w.Name()) {
					return ctx.InspectVariableIfLoaded(w.Scope(), w.Name()+stepTSuffix), nil
				}
				if ctx.InspectVariableIfLoaded(w.Scope(), w.Name()+stepTSuffix) != nil {
					t.Errorf("%s: a plain transposed copy beside the folded one", w.ScopeAndName())
				}
				gain := ctx.InspectVariableIfLoaded(strings.TrimSuffix(w.Scope(), "/mixer")+"/norm", "weight")
				return ctx.InspectVariableIfLoaded(w.Scope(), w.Name()+stepTNSuffix), tensors.MustCopyFlatData[float32](gain.MustValue())
			}
			folded := 0
			for key, w := range weights {
				c, gain := copyOf(w)
				if c == nil {
					t.Fatalf("%s: no copy", key)
				}
				if gain != nil {
					folded++
				}
				dims := w.Shape().Dimensions
				r := len(dims)
				want := append(slices.Clone(dims[:r-2]), dims[r-1], dims[r-2])
				if !slices.Equal(c.Shape().Dimensions, want) || c.Shape().DType != w.Shape().DType || c.Trainable {
					t.Fatalf("%s: copy %s trainable=%v, want %v %s not trainable", key, c.Shape(), c.Trainable, want, w.Shape().DType)
				}
				wv, cv := tensors.MustCopyFlatData[float32](w.MustValue()), tensors.MustCopyFlatData[float32](c.MustValue())
				rows, cols := dims[r-2], dims[r-1]
				for m := 0; m < len(wv)/(rows*cols); m++ {
					for i := range rows {
						for j := range cols {
							a, b := wv[m*rows*cols+i*cols+j], cv[m*rows*cols+j*rows+i]
							if gain != nil {
								a *= gain[i]
							}
							if a != b {
								t.Fatalf("%s: [%d, %d, %d] is %g (with the gain if folded), copy has %g", key, m, i, j, a, b)
							}
						}
					}
				}
			}
			if (fold && folded < 3) || (!fold && folded != 0) { // folded: at least an in_proj, a router and an fc1
				t.Errorf("%d gain-folded copies", folded)
			}
			if n, err := SetStepLayout(backend, ctx, layout); err != nil || n != 0 {
				t.Errorf("second call: %d copies, error %v; want 0", n, err)
			}
			// The step reads the copies: with them zeroed, a step's logits no longer match the
			// prefill's (which reads the weights) at the same position.
			stepVsPrefill := func() float64 {
				dec, err := NewDecoder(backend, ctx, cfg, 1, 8)
				if err != nil {
					t.Fatal(err)
				}
				full, err := dec.Prefill([][]int{{5, 7}})
				if err != nil {
					t.Fatal(err)
				}
				want := tensors.MustCopyFlatData[float32](full)
				if _, err := dec.Prefill([][]int{{5}}); err != nil {
					t.Fatal(err)
				}
				step, err := dec.Step([]int{7})
				if err != nil {
					t.Fatal(err)
				}
				got := tensors.MustCopyFlatData[float32](step)
				diff := 0.0
				for i := range got {
					diff = math.Max(diff, math.Abs(float64(got[i]-want[i])))
				}
				return diff
			}
			if d := stepVsPrefill(); d > 1e-5 {
				t.Errorf("with the copies: step and prefill logits differ by %g", d)
			}
			// Nor does the step read the weights themselves: with them zeroed, its logits stay the
			// same.
			stepLogits := func() []float32 {
				dec, err := NewDecoder(backend, ctx, cfg, 1, 8)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := dec.Prefill([][]int{{5}}); err != nil { // a step from empty states
					t.Fatal(err)
				}
				step, err := dec.Step([]int{7})
				if err != nil {
					t.Fatal(err)
				}
				return tensors.MustCopyFlatData[float32](step)
			}
			before := stepLogits()
			saved := map[*context.Variable]*tensors.Tensor{}
			for _, w := range weights {
				c, err := w.MustValue().LocalClone()
				if err != nil {
					t.Fatal(err)
				}
				saved[w] = c
				if err := w.SetValue(tensors.FromShape(w.Shape())); err != nil {
					t.Fatal(err)
				}
			}
			if after := stepLogits(); !slices.Equal(after, before) {
				t.Errorf("with the weights zeroed and their copies kept, the step's logits changed")
			}
			for w, v := range saved {
				if err := w.SetValue(v); err != nil {
					t.Fatal(err)
				}
			}
			for _, w := range weights {
				c, _ := copyOf(w)
				if err := c.SetValue(tensors.FromShape(c.Shape())); err != nil {
					t.Fatal(err)
				}
			}
			if d := stepVsPrefill(); d < 1e-3 {
				t.Errorf("with the copies zeroed: step and prefill logits differ by only %g; the step does not read the copies", d)
			}
			// DropStepWeights removes the copies: the step reads the weights again.
			if n, err := DropStepWeights(ctx); err != nil || n != len(weights)+extra {
				t.Errorf("DropStepWeights: %d removed, error %v; want %d", n, err, len(weights)+extra)
			}
			if d := stepVsPrefill(); d > 1e-5 {
				t.Errorf("after DropStepWeights: step and prefill logits differ by %g", d)
			}
			// SetStepLayout to the other layout replaces the copies.
			other := StepTransposed
			if !fold {
				other = StepFolded
			}
			if _, err := SetStepLayout(backend, ctx, layout); err != nil {
				t.Fatal(err)
			}
			if _, err := SetStepLayout(backend, ctx, other); err != nil || StepLayoutOf(ctx) != other {
				t.Errorf("SetStepLayout(%s) after %s: layout %q, error %v", other, layout, StepLayoutOf(ctx), err)
			}
			if other == StepTransposed && ctx.InspectVariableIfLoaded("/decoder/layers/0/mixer", "in_proj"+stepTNSuffix) != nil {
				t.Errorf("SetStepLayout(transposed) left a folded copy")
			}
			if _, err := SetStepLayout(backend, ctx, StepInOut); err != nil || StepLayoutOf(ctx) != StepInOut {
				t.Errorf("SetStepLayout(inout): layout %q, error %v", StepLayoutOf(ctx), err)
			}
			if _, err := SetStepLayout(backend, ctx, "rows"); err == nil || !strings.Contains(err.Error(), `"rows"`) {
				t.Errorf("SetStepLayout(rows): error %v, want one naming it", err)
			}
		})
	}
}

// TestStepRowsValidation checks the bounds of step_rows and StepProduct's shape check.
func TestStepRowsValidation(t *testing.T) {
	for _, rows := range []int{-1, MaxStepRows + 1} {
		c := MustPreset("tiny")
		c.StepRows = rows
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "step_rows") {
			t.Errorf("step_rows %d: error %v, want one naming step_rows", rows, err)
		}
	}
	c := MustPreset("tiny")
	c.StepRows = MaxStepRows
	if err := c.Validate(); err != nil {
		t.Errorf("step_rows %d: %v", MaxStepRows, err)
	}
	backend := cpuBackend(t)
	var msg string
	func() {
		defer func() { msg = fmt.Sprint(recover()) }()
		MustExecOnce(backend, func(x, w *Node) *Node { return StepProduct(c, x, w) },
			tensors.FromValue([][]float32{{1, 2, 3}}), tensors.FromValue([][]float32{{1}, {2}}))
	}()
	if !strings.Contains(msg, "StepProduct") {
		t.Errorf("mismatched shapes: panic %q, want one naming StepProduct", msg)
	}
}

// randomizeNormGains sets every RMSNorm and LayerNorm gain ("weight" under a "norm" scope) of
// ctx to values drawn uniformly from [0.5, 1.5), so that tests see gains other than their
// initial 1.
func randomizeNormGains(t *testing.T, ctx *context.Context, seed uint64) {
	t.Helper()
	if err := RandomizeNormGains(ctx, seed); err != nil {
		t.Fatal(err)
	}
}

// TestStepRowProduct checks stepRowProduct against a float64 sum: x [B, in] against weights
// [out, in] and [B, out, in] in float32 and bfloat16 (the reference rounds the weights the same
// way), with the sum of squares row and with the added column, to 1e-5 of the largest term sum.
func TestStepRowProduct(t *testing.T) {
	backend := cpuBackend(t)
	rng := rand.New(rand.NewPCG(3, 4))
	const B, in, out = 2, 7, 5
	xs := make([]float32, B*in)
	for i := range xs {
		xs[i] = float32(rng.NormFloat64())
	}
	ws := make([]float32, B*out*in)
	for i := range ws {
		ws[i] = float32(rng.NormFloat64())
	}
	adds := make([]float32, B*out)
	for i := range adds {
		adds[i] = float32(rng.NormFloat64())
	}
	xt := tensors.FromFlatDataAndDimensions(xs, B, in)
	at := tensors.FromFlatDataAndDimensions(adds, B, out)
	for _, dtype := range []dtypes.DType{dtypes.Float32, dtypes.BFloat16} {
		for _, batched := range []bool{false, true} {
			dims := []int{out, in}
			if batched {
				dims = []int{B, out, in}
			}
			wt := MustExecOnce(backend, func(w *Node) *Node { return ConvertDType(w, dtype) },
				tensors.FromFlatDataAndDimensions(ws[:shapes.Make(dtypes.Float32, dims...).Size()], dims...))
			wr := MustExecOnce(backend, func(w *Node) *Node { return ConvertDType(w, dtypes.Float32) }, wt)
			wv := tensors.MustCopyFlatData[float32](wr) // the weights as the product sees them
			w := func(b, j, k int) float64 {
				if batched {
					return float64(wv[(b*out+j)*in+k])
				}
				return float64(wv[j*in+k])
			}
			outs := MustExecOnceN(backend, func(x, w, add *Node) []*Node {
				p, sq := stepRowProduct(x, w, true, nil)
				pa, _ := stepRowProduct(x, w, false, add)
				return []*Node{p, sq, pa}
			}, xt, wt, at)
			p, sq, pa := tensors.MustCopyFlatData[float32](outs[0]), tensors.MustCopyFlatData[float32](outs[1]), tensors.MustCopyFlatData[float32](outs[2])
			name := fmt.Sprintf("%s, batched %v", dtype, batched)
			for b := range B {
				var wantSq float64
				for k := range in {
					wantSq += float64(xs[b*in+k]) * float64(xs[b*in+k])
				}
				if math.Abs(float64(sq[b])-wantSq) > 1e-5*wantSq {
					t.Errorf("%s: squares[%d] = %g, want %g", name, b, sq[b], wantSq)
				}
				for j := range out {
					var want, scale float64
					for k := range in {
						term := w(b, j, k) * float64(xs[b*in+k])
						want += term
						scale += math.Abs(term)
					}
					if math.Abs(float64(p[b*out+j])-want) > 1e-5*scale {
						t.Errorf("%s: p[%d, %d] = %g, want %g", name, b, j, p[b*out+j], want)
					}
					wantA := want + float64(adds[b*out+j])
					if math.Abs(float64(pa[b*out+j])-wantA) > 1e-5*(scale+math.Abs(float64(adds[b*out+j]))) {
						t.Errorf("%s: with the added column [%d, %d] = %g, want %g", name, b, j, pa[b*out+j], wantA)
					}
				}
			}
		}
	}
}
