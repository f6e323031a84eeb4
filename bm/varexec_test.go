package bm

import (
	"slices"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// TestReadOnlyExec checks the executable that feeds a graph's variables from the list recorded
// when the graph is built: it reads the variables' current values (a value set after the build
// is used by the next call), leaves out the variables the graph does not read, builds a graph
// per input shape, and refuses to build a graph that changes a variable.
func TestReadOnlyExec(t *testing.T) {
	backend := cpuBackend(t)
	ctx := context.New()
	w := ctx.In("a").VariableWithValue("w", []float32{1, 2, 3})
	ctx.In("b").VariableWithValue("unused", []float32{7})
	builds := 0
	e, err := newReadOnlyExec(backend, ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		builds++
		v := ctx.In("a").GetVariable("w").ValueGraph(inputs[0].Graph())
		return []*Node{Add(inputs[0], ReduceAllSum(v))}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Finalize()
	run := func(x []float32) []float32 {
		t.Helper()
		outs, err := e.Exec(tensors.FromFlatDataAndDimensions(x, len(x)))
		if err != nil {
			t.Fatal(err)
		}
		return tensors.MustCopyFlatData[float32](outs[0])
	}
	if got := run([]float32{0, 1}); !slices.Equal(got, []float32{6, 7}) {
		t.Errorf("first call: %v, want [6 7]", got)
	}
	if err := w.SetValue(tensors.FromFlatDataAndDimensions([]float32{10, 20, 30}, 3)); err != nil {
		t.Fatal(err)
	}
	if got := run([]float32{0, 1}); !slices.Equal(got, []float32{60, 61}) {
		t.Errorf("after SetValue: %v, want [60 61]", got)
	}
	if got := run([]float32{1, 2, 3}); !slices.Equal(got, []float32{61, 62, 63}) || builds != 2 {
		t.Errorf("another shape: %v after %d builds, want [61 62 63] after 2", got, builds)
	}
	for id, feed := range e.feeds {
		if len(feed.vars) != 1 || feed.vars[0] != w {
			t.Errorf("graph %d feeds %d variables, want w alone", id, len(feed.vars))
		}
	}
	bad, err := newReadOnlyExec(backend, ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		v := ctx.In("a").GetVariable("w")
		v.SetValueGraph(MulScalar(v.ValueGraph(inputs[0].Graph()), 2))
		return []*Node{inputs[0]}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Finalize()
	if _, err := bad.Exec(tensors.FromFlatDataAndDimensions([]float32{1}, 1)); err == nil || !strings.Contains(err.Error(), "changes variable /a/w") {
		t.Errorf("a graph that changes a variable: error %v, want one naming it", err)
	}
}
