package bm

import (
	"strings"
	"testing"

	"github.com/gomlx/go-xla/pkg/stablehlo"
	xladtypes "github.com/gomlx/go-xla/pkg/types/dtypes"
	xlashapes "github.com/gomlx/go-xla/pkg/types/shapes"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
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
