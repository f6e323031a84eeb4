package bm

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// TestArgMaxFew checks the elementwise argmax against ArgMax and ReduceMax on rows with a
// unique largest value, with ties (the first of equals, as ArgMax), with the largest first and
// last, and with negative values only.
func TestArgMaxFew(t *testing.T) {
	backend := cpuBackend(t)
	rows := [][]float32{
		{0.1, 0.7, -0.2, 0.3, 0.65, 0, 0.2, 0.1},
		{0.5, 0.1, 0.5, 0.5, 0.2, 0.5, 0.1, 0},
		{-1, -2, -3, -0.5, -0.5, -4, -5, -6},
		{9, 1, 2, 3, 4, 5, 6, 7},
		{1, 2, 3, 4, 5, 6, 7, 8},
		{2, 2, 2, 2, 2, 2, 2, 2},
	}
	flat := slices.Concat(rows...)
	in := tensors.FromFlatDataAndDimensions(flat, len(rows), 8)
	outs := MustExecOnceN(backend, func(l *Node) []*Node {
		idx, best := argMaxFew(l)
		return []*Node{idx, best, ArgMax(l, -1, dtypes.Int32), ReduceMax(l, -1)}
	}, in)
	idx, best := tensors.MustCopyFlatData[int32](outs[0]), tensors.MustCopyFlatData[float32](outs[1])
	wantIdx, wantBest := tensors.MustCopyFlatData[int32](outs[2]), tensors.MustCopyFlatData[float32](outs[3])
	if !slices.Equal(idx, wantIdx) || !slices.Equal(best, wantBest) {
		t.Errorf("argMaxFew: indices %v, largest %v; ArgMax %v, ReduceMax %v", idx, best, wantIdx, wantBest)
	}
	if want := []int32{1, 0, 3, 0, 7, 0}; !slices.Equal(idx, want) {
		t.Errorf("argMaxFew: indices %v, want %v", idx, want)
	}
}

// TestRouterCopies checks FoldStepWeights' router copies: one beside the out_proj of each Mamba
// block followed by an MoE block (every other block of the tiny BlackMamba, none for the dense
// Mamba), equal to the gain-folded router copy times out_proj's transposed copy in float32
// (1e-5 relative, summed in float64 here), kept by a second FoldStepWeights and removed by
// DropStepWeights.
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
			v := ctx.InspectVariableIfLoaded(mixer, "out_proj"+stepRouterSuffix)
			want := b.Kind == KindMamba && i+1 < len(cfg.Blocks()) && cfg.Blocks()[i+1].Kind == KindMoE
			if (v != nil) != want {
				t.Fatalf("%s block %d (%c): router copy present %v, want %v", name, i, b.Kind, v != nil, want)
			}
			if v == nil {
				continue
			}
			copies++
			next := layerScope(ctx, i+1).In("mixer").Scope()
			rt := f32Values(t, ctx.InspectVariableIfLoaded(next, "router_weight"+stepTNSuffix))
			ot := f32Values(t, ctx.InspectVariableIfLoaded(mixer, "out_proj"+stepTSuffix))
			got := f32Values(t, v)
			E, d, D := v.Shape().Dim(0), cfg.Dim, cfg.Inner()
			if !slices.Equal(v.Shape().Dimensions, []int{E, D}) || v.Shape().DType != dtypes.Float32 {
				t.Fatalf("%s block %d: router copy %s, want float32 [%d %d]", name, i, v.Shape(), E, D)
			}
			for e := range E {
				for k := range D {
					var sum, abs float64
					for j := range d {
						p := float64(rt[e*d+j]) * float64(ot[j*D+k])
						sum, abs = sum+p, abs+math.Abs(p)
					}
					if diff := math.Abs(float64(got[e*D+k]) - sum); diff > 1e-5*abs {
						t.Fatalf("%s block %d: router copy [%d, %d] = %g, want %g", name, i, e, k, got[e*D+k], sum)
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
