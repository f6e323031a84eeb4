package bm

import (
	"fmt"
	"reflect"
	"unsafe"

	"github.com/gomlx/go-xla/pkg/stablehlo"
	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Input-output aliasing for the XLA backend.
//
// GoMLX v0.26 has no way to declare that an output of a graph may be written into the buffer of
// one of its parameters. XLA reads that declaration from the StableHLO program as the argument
// attribute tf.aliasing_output (the one JAX writes for donated arguments). With it, a donated
// parameter's buffer becomes the output's: the output keeps the input's device address and
// nothing is allocated for it. A step that is called again and again on its own outputs then
// sees the same buffers on every call, and XLA replays the CUDA graph it recorded for the step
// without updating it.
//
// aliasOutputs sets that attribute on the parameters of the graph being built. It reaches the
// StableHLO value behind a parameter through two unexported fields (graph.Node.outputOps and
// the XLA backend's Node.value), checking their types, so that a GoMLX version that changes
// them gives an error rather than a wrong program.

// xlaNodeType is the name of the XLA backend's op type, by reflection (bm does not import the
// backend, which needs cgo).
const xlaNodeType = "github.com/gomlx/gomlx/backends/xla.Node"

var (
	opsType   = reflect.TypeOf([]backends.Op(nil))
	valueType = reflect.TypeOf((*stablehlo.Value)(nil))
)

// aliasingAttr is the StableHLO argument attribute XLA turns into the module's input-output
// alias configuration.
const aliasingAttr = "tf.aliasing_output"

// aliasOutputs declares, for each i, that outputs[i] may take the buffer of params[i] when that
// parameter is donated. params must be parameters of the graph being built and outputs its
// first outputs, in the order the graph returns them; each pair must have the same shape. It
// reports false, changing nothing, when the graph is not built by the XLA backend (the pure-Go
// backend has no CUDA graphs to keep).
func aliasOutputs(params, outputs []*Node) (bool, error) {
	if len(params) != len(outputs) {
		return false, fmt.Errorf("bm: aliasing %d parameters to %d outputs", len(params), len(outputs))
	}
	values := make([]*stablehlo.Value, len(params))
	for i, p := range params {
		if p.Type() != NodeTypeParameter {
			return false, fmt.Errorf("bm: aliasing output %d: input %d is a %s node, not a parameter", i, i, p.Type())
		}
		if !p.Shape().Equal(outputs[i].Shape()) {
			return false, fmt.Errorf("bm: aliasing output %d: its shape %s differs from its parameter's %s", i, outputs[i].Shape(), p.Shape())
		}
		v, ok, err := stableHLOValue(p)
		if err != nil || !ok {
			return false, err
		}
		values[i] = v
	}
	for i, v := range values {
		if v.Attributes == nil {
			v.Attributes = map[string]any{}
		}
		v.Attributes[aliasingAttr] = int32(i)
	}
	return true, nil
}

// AliasUpdatedVariables declares, in graph g that a context.Exec over ctx is building, that
// each variable g changes may be written into the buffer of its own parameter. Call it at the
// end of the Exec's graph function, after the last SetValueGraph. context.Exec returns the
// changed variables as the graph's first outputs, in the context's order, and donates their
// buffers, so with the declaration a training step updates its weights and optimizer state in
// place: no second copy of them is allocated, and the step sees the same buffers at every call,
// so XLA replays the CUDA graphs it recorded for it instead of updating them (which took 25-45 ms
// before the first kernel of a 1.5B step on an H200). It reports whether it declared anything:
// false, changing nothing, off the XLA backend or when g changes no variable. It is meant for
// graphs on one device.
func AliasUpdatedVariables(ctx *context.Context, g *Graph) (bool, error) {
	var params, outputs []*Node
	for v := range ctx.IterVariables() {
		if !v.ChangedInGraph(g) {
			continue
		}
		p := g.GetParameterByName(v.ParameterName())
		if p == nil {
			return false, fmt.Errorf("bm: aliasing variable %s: graph %q has no parameter %q", v.ScopeAndName(), g.Name(), v.ParameterName())
		}
		params = append(params, p)
		outputs = append(outputs, v.ValueGraph(g))
	}
	if len(params) == 0 {
		return false, nil
	}
	return aliasOutputs(params, outputs)
}

// stableHLOValue returns the StableHLO value behind node n, or false when n's graph is not built
// by the XLA backend.
func stableHLOValue(n *Node) (*stablehlo.Value, bool, error) {
	f := reflect.ValueOf(n).Elem().FieldByName("outputOps")
	if !f.IsValid() || f.Type() != opsType {
		return nil, false, fmt.Errorf("bm: input-output aliasing: graph.Node has no outputOps field of type %s (GoMLX changed)", opsType)
	}
	ops := *(*[]backends.Op)(unsafe.Pointer(f.UnsafeAddr()))
	if len(ops) != 1 || ops[0] == nil {
		return nil, false, fmt.Errorf("bm: input-output aliasing: a parameter node with %d backend ops", len(ops))
	}
	t := reflect.TypeOf(ops[0])
	if t.Kind() != reflect.Pointer || t.Elem().PkgPath()+"."+t.Elem().Name() != xlaNodeType {
		return nil, false, nil
	}
	vf := reflect.ValueOf(ops[0]).Elem().FieldByName("value")
	if !vf.IsValid() || vf.Type() != valueType {
		return nil, false, fmt.Errorf("bm: input-output aliasing: %s has no value field of type %s (GoMLX changed)", xlaNodeType, valueType)
	}
	v := *(**stablehlo.Value)(unsafe.Pointer(vf.UnsafeAddr()))
	if v == nil {
		return nil, false, fmt.Errorf("bm: input-output aliasing: a parameter without its StableHLO value")
	}
	return v, true, nil
}
