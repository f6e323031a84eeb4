package bm

import (
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/go-xla/pkg/stablehlo"
	xladtypes "github.com/gomlx/go-xla/pkg/types/dtypes"
	xlashapes "github.com/gomlx/go-xla/pkg/types/shapes"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// TestAliasOutputs: on the pure-Go backend aliasOutputs changes nothing and says so; it rejects
// pairs of different shapes, a node that is not a parameter, and lists of different lengths;
// on the XLA backend (BLACKMAMBA_TEST_BACKEND) it marks the parameters.
func TestAliasOutputs(t *testing.T) {
	backend := cpuBackend(t)
	g := NewGraph(backend, "alias")
	x := Parameter(g, "x", shapes.Make(dtypes.Float32, 3))
	n := Parameter(g, "n", shapes.Make(dtypes.Int32))
	y, m := AddScalar(x, 1), AddScalar(n, 1)
	ok, err := aliasOutputs([]*Node{x, n}, []*Node{y, m})
	if err != nil {
		t.Fatal(err)
	}
	if want := backend.Name() == "xla"; ok != want {
		t.Errorf("aliasOutputs on backend %q reported %v, want %v", backend.Name(), ok, want)
	}
	if ok {
		for i, p := range []*Node{x, n} {
			v, _, err := stableHLOValue(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := v.Attributes[aliasingAttr]; got != int32(i) {
				t.Errorf("parameter %d: %s = %v, want %d", i, aliasingAttr, got, i)
			}
		}
	}
	for _, c := range []struct {
		name            string
		params, outputs []*Node
		want            string
	}{
		{"shapes", []*Node{x}, []*Node{m}, "differs from its parameter's"},
		{"not a parameter", []*Node{y}, []*Node{y}, "not a parameter"},
		{"lengths", []*Node{x, n}, []*Node{y}, "2 parameters to 1 outputs"},
	} {
		if _, err := aliasOutputs(c.params, c.outputs); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// TestAliasingAttrText: the attribute as aliasOutputs sets it (an int32) is written into the
// StableHLO program the way XLA reads it, "tf.aliasing_output = N : i32" on the argument.
func TestAliasingAttrText(t *testing.T) {
	b := stablehlo.New("alias")
	fn := b.Main()
	x, err := fn.NamedInput("x", xlashapes.Make(xladtypes.Float32, 3))
	if err != nil {
		t.Fatal(err)
	}
	x.Attributes = map[string]any{aliasingAttr: int32(0)}
	if err := fn.Return(x); err != nil {
		t.Fatal(err)
	}
	program, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	if want := "{ tf.aliasing_output = 0 : i32 }"; !strings.Contains(string(program), want) {
		t.Errorf("program lacks %q:\n%s", want, program)
	}
}

// TestAliasUpdatedVariables runs a context.Exec whose graph changes two of three variables and
// declares them aliased: on the XLA backend (BLACKMAMBA_TEST_BACKEND) the changed variables'
// parameters carry the output index context.Exec gives them (the changed variables first, in
// the context's order); on the pure-Go backend nothing is declared. Either way three calls give
// the values of the update rule, and a graph that changes nothing declares nothing.
func TestAliasUpdatedVariables(t *testing.T) {
	backend := cpuBackend(t)
	ctx := context.New()
	a := ctx.VariableWithValue("a", []float32{1, 2})
	b := ctx.VariableWithValue("b", float32(10))
	c := ctx.VariableWithValue("c", []int32{5, 6, 7})
	declared := -1
	exec, err := context.NewExec(backend, ctx, func(ctx *context.Context, x *Node) *Node {
		g := x.Graph()
		av, bv := a.ValueGraph(g), b.ValueGraph(g)
		c.SetValueGraph(AddScalar(c.ValueGraph(g), 1))
		a.SetValueGraph(Add(av, Mul(x, bv)))
		ok, err := AliasUpdatedVariables(ctx, g)
		if err != nil {
			panic(err)
		}
		declared = 0
		if ok {
			declared = 1
			for i, v := range []*context.Variable{a, c} { // the context's order
				hv, _, err := stableHLOValue(g.GetParameterByName(v.ParameterName()))
				if err != nil {
					panic(err)
				}
				if got := hv.Attributes[aliasingAttr]; got != int32(i) {
					t.Errorf("variable %s: %s = %v, want %d", v.Name(), aliasingAttr, got, i)
				}
			}
			if hv, _, _ := stableHLOValue(g.GetParameterByName(b.ParameterName())); hv.Attributes[aliasingAttr] != nil {
				t.Errorf("unchanged variable b aliased: %v", hv.Attributes)
			}
		}
		return ReduceAllSum(av)
	})
	if err != nil {
		t.Fatal(err)
	}
	for step := range 3 {
		out, err := exec.Exec([]float32{1, -1})
		if err != nil {
			t.Fatal(err)
		}
		// a starts at {1, 2} and gains {10, -10} per call; the output is its sum before the call.
		if got := tensors.ToScalar[float32](out[0]); got != 3 {
			t.Errorf("call %d: sum of a = %v, want 3", step, got)
		}
	}
	if want := map[bool]int{true: 1, false: 0}[backend.Name() == "xla"]; declared != want {
		t.Errorf("backend %q: aliasing declared %d, want %d", backend.Name(), declared, want)
	}
	wantA, wantC := []float32{31, -28}, []int32{8, 9, 10}
	if got := tensors.MustCopyFlatData[float32](a.MustValue()); !slices.Equal(got, wantA) {
		t.Errorf("a = %v, want %v", got, wantA)
	}
	if got := tensors.MustCopyFlatData[int32](c.MustValue()); !slices.Equal(got, wantC) {
		t.Errorf("c = %v, want %v", got, wantC)
	}
	if got := tensors.ToScalar[float32](b.MustValue()); got != 10 {
		t.Errorf("b = %v, want 10 (unchanged)", got)
	}
	g := NewGraph(backend, "reads only")
	defer g.Finalize()
	_ = b.ValueGraph(g)
	if ok, err := AliasUpdatedVariables(ctx, g); ok || err != nil {
		t.Errorf("graph that changes nothing: aliased %v, error %v", ok, err)
	}
}
