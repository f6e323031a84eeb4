package bm

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// TestRouterCopies checks FoldStepWeights' router copies: beside each Mamba block followed by
// an MoE block (every other block of the tiny BlackMamba, none for the dense Mamba), in_proj
// [2D+E, d] with the router rows, equal to the block's gain-folded in_proj copy then the MoE
// block's gain-folded router copy, and out_proj [d+E, D], equal to the block's transposed
// out_proj copy then the router copy times it in float32 (1e-5 relative, summed in float64
// here); kept by a second FoldStepWeights and removed by DropStepWeights.
func TestRouterCopies(t *testing.T) {
	backend := cpuBackend(t)
	for _, name := range []string{"tiny", "tiny-mamba"} {
		cfg := MustPreset(name)
		ctx := context.New()
		if err := InitWeights(backend, ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if err := RandomizeNormGains(ctx, 3); err != nil {
			t.Fatal(err)
		}
		if _, err := FoldStepWeights(backend, ctx); err != nil {
			t.Fatal(err)
		}
		copies := 0
		for i, b := range cfg.Blocks() {
			mixer := layerScope(ctx, i).In("mixer").Scope()
			inR := ctx.InspectVariableIfLoaded(mixer, "in_proj"+stepRouterSuffix)
			outR := ctx.InspectVariableIfLoaded(mixer, "out_proj"+stepRouterSuffix)
			want := b.Kind == KindMamba && i+1 < len(cfg.Blocks()) && cfg.Blocks()[i+1].Kind == KindMoE
			if (inR != nil) != want || (outR != nil) != want {
				t.Fatalf("%s block %d (%c): router copies present %v and %v, want %v", name, i, b.Kind, inR != nil, outR != nil, want)
			}
			if !want {
				continue
			}
			copies += 2
			next := layerScope(ctx, i+1).In("mixer").Scope()
			rt := f32Values(t, ctx.InspectVariableIfLoaded(next, "router_weight"+stepTNSuffix))
			ot := f32Values(t, ctx.InspectVariableIfLoaded(mixer, "out_proj"+stepTSuffix))
			it := f32Values(t, ctx.InspectVariableIfLoaded(mixer, "in_proj"+stepTNSuffix))
			E, d, D := len(rt)/cfg.Dim, cfg.Dim, cfg.Inner()
			if !slices.Equal(inR.Shape().Dimensions, []int{2*D + E, d}) || !slices.Equal(outR.Shape().Dimensions, []int{d + E, D}) {
				t.Fatalf("%s block %d: router copies %s and %s, want [%d %d] and [%d %d]", name, i, inR.Shape(), outR.Shape(), 2*D+E, d, d+E, D)
			}
			if got, want := f32Values(t, inR), append(slices.Clone(it), rt...); !slices.Equal(got, want) {
				t.Fatalf("%s block %d: in_proj router copy is not in_proj%s then router_weight%s", name, i, stepTNSuffix, stepTNSuffix)
			}
			got := f32Values(t, outR)
			if !slices.Equal(got[:d*D], ot) {
				t.Fatalf("%s block %d: the first %d rows of the out_proj router copy are not out_proj%s", name, i, d, stepTSuffix)
			}
			got = got[d*D:]
			for e := range E {
				for k := range D {
					var sum, abs float64
					for j := range d {
						p := float64(rt[e*d+j]) * float64(ot[j*D+k])
						sum, abs = sum+p, abs+math.Abs(p)
					}
					if diff := math.Abs(float64(got[e*D+k]) - sum); diff > 1e-5*abs {
						t.Fatalf("%s block %d: out_proj router row [%d, %d] = %g, want %g", name, i, e, k, got[e*D+k], sum)
					}
				}
			}
		}
		if n, err := FoldStepWeights(backend, ctx); err != nil || n != 0 {
			t.Fatalf("%s: second FoldStepWeights added %d copies, error %v; want 0, nil", name, n, err)
		}
		if _, err := DropStepWeights(ctx); err != nil {
			t.Fatal(err)
		}
		for v := range ctx.IterVariables() {
			if strings.HasSuffix(v.Name(), stepRouterSuffix) {
				t.Fatalf("%s: %s left after DropStepWeights", name, v.ScopeAndName())
			}
		}
		t.Logf("%s: %d router copies", name, copies)
	}
}

// f32Values returns v's values in float32.
func f32Values(t *testing.T, v *context.Variable) []float32 {
	t.Helper()
	if v == nil {
		t.Fatal("variable missing")
	}
	val, err := v.Value()
	if err != nil {
		t.Fatal(err)
	}
	if val.DType() != dtypes.Float32 {
		t.Fatalf("%s is %s, want float32", v.ScopeAndName(), val.DType())
	}
	return tensors.MustCopyFlatData[float32](val)
}
