package bm

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// This file replaces GoMLX's gradient of the Slice op.
//
// The stock vector-Jacobian product of Slice writes the incoming gradient into a zero tensor
// with Pad, which the pure-Go backend ("go", simplego) does not implement; so Slice, SliceAxis,
// Split and ShiftWithScalar could not be differentiated there. The replacement below builds
// the same adjoint with Concatenate of zero blocks, which every backend implements. The
// registration is global: it also replaces the stock VJP on XLA, where Concatenate with
// broadcast zeros compiles to the same kind of fused copy that Pad does.

func init() {
	VJPRegistration[NodeTypeSlice] = sliceVJPNoPad
}

// sliceParamsRE matches the text GoMLX v0.26.0 prints for a Slice node's inputs, e.g.
// "Slice(x=[#0], starts=[0 1], limits=[2 3], strides=[1 1])". The slice bounds are not
// exported in any other way.
var sliceParamsRE = regexp.MustCompile(
	`Slice\(x=\[#\d+\], starts=\[([0-9 ]*)\], limits=\[([0-9 ]*)\], strides=\[([0-9 ]*)\]\)`)

// sliceParams recovers the starts, limits and strides of a Slice node from its description.
// It panics with a message naming the node when the description cannot be parsed or does not
// agree with the node's shapes.
func sliceParams(node *Node) (starts, limits, strides []int) {
	desc := node.String()
	matches := sliceParamsRE.FindAllStringSubmatch(desc, -1)
	if len(matches) == 0 {
		panic(fmt.Sprintf("bm: Slice gradient: cannot read the slice bounds from the node description %q "+
			"(the format of graph.Node.String changed?)", desc))
	}
	m := matches[len(matches)-1]
	parse := func(name, s string) []int {
		fields := strings.Fields(s)
		out := make([]int, len(fields))
		for i, f := range fields {
			v, err := strconv.Atoi(f)
			if err != nil {
				panic(fmt.Sprintf("bm: Slice gradient: bad %s value %q in %q", name, f, desc))
			}
			out[i] = v
		}
		return out
	}
	starts, limits, strides = parse("starts", m[1]), parse("limits", m[2]), parse("strides", m[3])
	x := node.Inputs()[0]
	rank := x.Rank()
	if len(starts) != rank || len(limits) != rank || len(strides) != rank {
		panic(fmt.Sprintf("bm: Slice gradient: node %q has bounds for %d/%d/%d axes, input has rank %d",
			desc, len(starts), len(limits), len(strides), rank))
	}
	for i := range rank {
		if strides[i] < 1 {
			panic(fmt.Sprintf("bm: Slice gradient: node %q has stride %d on axis %d", desc, strides[i], i))
		}
		want := (limits[i] - starts[i] + strides[i] - 1) / strides[i]
		if want != node.Shape().Dimensions[i] || starts[i] < 0 || limits[i] > x.Shape().Dimensions[i] {
			panic(fmt.Sprintf("bm: Slice gradient: bounds of node %q do not match its shapes (input %s, output %s)",
				desc, x.Shape(), node.Shape()))
		}
	}
	return
}

// sliceVJPNoPad is the adjoint of y = x[starts:limits:strides]: a tensor shaped like x that
// holds v where the slice came from and zeros elsewhere. Strides > 1 are handled by
// interleaving zeros with a Reshape.
func sliceVJPNoPad(node *Node, vjpOutputs []*Node, _ shapes.Shape) []*Node {
	v := vjpOutputs[0]
	x := node.Inputs()[0]
	starts, _, strides := sliceParams(node)
	g := node.Graph()
	dims := x.Shape().Dimensions
	for axis := range dims {
		n := v.Shape().Dimensions[axis]
		// Interleave zeros between elements for a stride s > 1: [.., n, ..] -> [.., n*s, ..].
		if s := strides[axis]; s > 1 && n > 0 {
			vd := v.Shape().Dimensions
			expanded := append(append(append([]int{}, vd[:axis+1]...), 1), vd[axis+1:]...)
			ve := Reshape(v, expanded...)
			zd := append([]int{}, expanded...)
			zd[axis+1] = s - 1
			ve = Concatenate([]*Node{ve, Zeros(g, shapes.Make(v.DType(), zd...))}, axis+1)
			merged := append([]int{}, vd...)
			merged[axis] = n * s
			v = Reshape(ve, merged...)
			n *= s
		}
		need := dims[axis] - starts[axis] // length from the start to the end of x
		if n > need {
			// Only interleaved zeros past the last selected element are dropped.
			v = SliceAxis(v, axis, AxisRange(0, need))
			n = need
		}
		parts := make([]*Node, 0, 3)
		if starts[axis] > 0 {
			zd := append([]int{}, v.Shape().Dimensions...)
			zd[axis] = starts[axis]
			parts = append(parts, Zeros(g, shapes.Make(v.DType(), zd...)))
		}
		parts = append(parts, v)
		if n < need {
			zd := append([]int{}, v.Shape().Dimensions...)
			zd[axis] = need - n
			parts = append(parts, Zeros(g, shapes.Make(v.DType(), zd...)))
		}
		if len(parts) > 1 {
			v = Concatenate(parts, axis)
		}
	}
	return []*Node{v}
}
