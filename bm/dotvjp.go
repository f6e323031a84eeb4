package bm

import (
	"fmt"
	"reflect"
	"slices"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// The gradient of DotGeneral as two DotGenerals.
//
// GoMLX v0.26 differentiates out = DotGeneral(lhs, rhs) by broadcasting the output's cotangent
// against the other operand and reducing: for the tied head, logits [B, T, V] = h [B, T, d]·Eᵀ,
// the embedding's gradient is built as a [B, T, V, d] product summed over B and T. The pure-Go
// backend materialises that tensor (26 GB for the tiny model at 8 × 512), and XLA compiles it
// as a reduction fusion instead of a matrix multiplication, so every weight and input gradient
// of every matmul runs without the GPU's tensor cores and compiles slowly.
//
// This package therefore registers, for the whole process, the textbook rule: with batch axes
// b, the free (cross) axes of each operand and the contracted axes c,
//
//	∂lhs = DotGeneral(v, contracting = v's rhs-free axes, batch = b; rhs, contracting = rhs-free, batch = b)
//	∂rhs = DotGeneral(v, contracting = v's lhs-free axes, batch = b; lhs, contracting = lhs-free, batch = b)
//
// each followed by a transpose back to the operand's axis order. Both are matrix
// multiplications of the same size as the forward one. The rule needs the node's axis lists,
// which GoMLX keeps in unexported fields; they are read with reflection, and if that ever fails
// (a GoMLX version with another layout) the node falls back to GoMLX's own rule.

// gomlxDotGeneralVJP is GoMLX's rule, kept for the fallback and for tests.
var gomlxDotGeneralVJP = VJPRegistration[NodeTypeDotGeneral]

func init() {
	VJPRegistration[NodeTypeDotGeneral] = func(node *Node, vjpOutputs []*Node, outputShape shapes.Shape) []*Node {
		axes, ok := dotGeneralAxesOf(node)
		if !ok {
			return gomlxDotGeneralVJP(node, vjpOutputs, outputShape)
		}
		return dotGeneralGrads(node.Inputs()[0], node.Inputs()[1], axes, vjpOutputs[0])
	}
}

// dotAxes are the axis lists of a DotGeneral node.
type dotAxes struct {
	lhsContracting, lhsBatch, rhsContracting, rhsBatch []int
}

// dotGeneralAxesOf reads the axis lists of a DotGeneral node.
func dotGeneralAxesOf(node *Node) (a dotAxes, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	if node.Type() != NodeTypeDotGeneral || len(node.Inputs()) != 2 {
		return a, false
	}
	in := reflect.ValueOf(node).Elem().FieldByName("inputs")
	if !in.IsValid() || in.Kind() != reflect.Interface || in.IsNil() {
		return a, false
	}
	st := in.Elem()
	if st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	if st.Kind() != reflect.Struct {
		return a, false
	}
	ints := func(name string) ([]int, bool) {
		f := st.FieldByName(name)
		if !f.IsValid() || f.Kind() != reflect.Slice {
			return nil, false
		}
		out := make([]int, f.Len())
		for i := range out {
			out[i] = int(f.Index(i).Int())
		}
		return out, true
	}
	var oks [4]bool
	a.lhsContracting, oks[0] = ints("lhsContractingAxes")
	a.lhsBatch, oks[1] = ints("lhsBatchAxes")
	a.rhsContracting, oks[2] = ints("rhsContractingAxes")
	a.rhsBatch, oks[3] = ints("rhsBatchAxes")
	lhs, rhs := node.Inputs()[0], node.Inputs()[1]
	if !oks[0] || !oks[1] || !oks[2] || !oks[3] ||
		len(a.lhsContracting) != len(a.rhsContracting) || len(a.lhsBatch) != len(a.rhsBatch) ||
		!validAxes(a.lhsContracting, a.lhsBatch, lhs.Rank()) || !validAxes(a.rhsContracting, a.rhsBatch, rhs.Rank()) {
		return a, false
	}
	return a, true
}

// validAxes reports whether contracting and batch are distinct axes of a rank-r operand.
func validAxes(contracting, batch []int, r int) bool {
	seen := make([]bool, r)
	for _, ax := range append(slices.Clone(contracting), batch...) {
		if ax < 0 || ax >= r || seen[ax] {
			return false
		}
		seen[ax] = true
	}
	return true
}

// crossAxes returns the axes of a rank-r operand that are neither contracted nor batch, in
// increasing order: the order in which they appear in DotGeneral's output.
func crossAxes(r int, contracting, batch []int) []int {
	var out []int
	for ax := range r {
		if !slices.Contains(contracting, ax) && !slices.Contains(batch, ax) {
			out = append(out, ax)
		}
	}
	return out
}

// dotGeneralGrads returns the gradients of DotGeneral(lhs, rhs) with the given axes for the
// output cotangent v ([batch…, lhs cross…, rhs cross…]).
func dotGeneralGrads(lhs, rhs *Node, a dotAxes, v *Node) []*Node {
	nb := len(a.lhsBatch)
	lhsCross := crossAxes(lhs.Rank(), a.lhsContracting, a.lhsBatch)
	rhsCross := crossAxes(rhs.Rank(), a.rhsContracting, a.rhsBatch)
	vBatch := iotaFrom(0, nb)
	vLhsCross := iotaFrom(nb, len(lhsCross))
	vRhsCross := iotaFrom(nb+len(lhsCross), len(rhsCross))
	if v.DType() != lhs.DType() {
		v = ConvertDType(v, lhs.DType())
	}
	grad := func(this *Node, thisBatch, thisCross, thisContracting []int, other *Node, otherBatch, otherCross,
		otherContracting []int, vOtherCross []int) *Node {
		// g: [batch…, this cross…, other's remaining axes = other's contracted axes in increasing order]
		g := DotGeneral(v, vOtherCross, vBatch, other, otherCross, otherBatch)
		// Where each axis of g goes in this operand.
		dest := make([]int, 0, this.Rank())
		dest = append(dest, thisBatch...)
		dest = append(dest, thisCross...)
		for _, ax := range crossAxes(other.Rank(), otherCross, otherBatch) { // other's contracted axes, ascending
			dest = append(dest, thisContracting[slices.Index(otherContracting, ax)])
		}
		if len(dest) != this.Rank() {
			panic(fmt.Sprintf("bm: DotGeneral gradient: %d axes for an operand of rank %d", len(dest), this.Rank()))
		}
		perm := make([]int, len(dest))
		identity := true
		for pos, ax := range dest {
			perm[ax] = pos
			identity = identity && pos == ax
		}
		if !identity {
			g = TransposeAllAxes(g, perm...)
		}
		return g
	}
	return []*Node{
		grad(lhs, a.lhsBatch, lhsCross, a.lhsContracting, rhs, a.rhsBatch, rhsCross, a.rhsContracting, vRhsCross),
		grad(rhs, a.rhsBatch, rhsCross, a.rhsContracting, lhs, a.lhsBatch, lhsCross, a.lhsContracting, vLhsCross),
	}
}

// iotaFrom returns [start, start+1, …, start+n−1].
func iotaFrom(start, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = start + i
	}
	return out
}
