package bm

import (
	"fmt"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// MaxStepRows bounds Config.StepRows.
const MaxStepRows = 64

// padStepRows pads axis of x with zero rows up to cfg.StepRows and returns the padded node
// and the function that cuts a result computed from it back to x's rows along the same axis.
// When the axis already holds StepRows rows or more (or StepRows is 0 or 1), x is returned as
// it is and the function is the identity.
func padStepRows(cfg Config, x *Node, axis int) (*Node, func(*Node) *Node) {
	if axis < 0 {
		axis += x.Rank()
	}
	n := x.Shape().Dim(axis)
	if cfg.StepRows <= n {
		return x, func(y *Node) *Node { return y }
	}
	dims := x.Shape().Clone().Dimensions
	dims[axis] = cfg.StepRows - n
	pad := Zeros(x.Graph(), shapes.Make(x.DType(), dims...))
	padded := Concatenate([]*Node{x, pad}, axis)
	return padded, func(y *Node) *Node {
		if y.Shape().Dim(axis) != cfg.StepRows {
			panic(fmt.Sprintf("bm: padded step rows: axis %d of %s holds %d rows, want %d", axis, y.Shape(), y.Shape().Dim(axis), cfg.StepRows))
		}
		return SliceAxis(y, axis, AxisRange(0, n))
	}
}

// StepProduct is ComputeEinsum(cfg, "bd,de->be", x, w) for the weight products of a decoding
// step: x [B, in], w [in, out] → [B, out] float32. With cfg.StepRows > B the product runs on
// StepRows rows (x followed by zero rows) and the first B rows are returned: the same values,
// computed by a matrix multiplication rather than by the elementwise product and reduction that
// XLA's GPU compiler substitutes for a single row against a small weight matrix.
func StepProduct(cfg Config, x, w *Node) *Node {
	if x.Rank() != 2 || w.Rank() != 2 || x.Shape().Dim(1) != w.Shape().Dim(0) {
		panic(fmt.Sprintf("bm.StepProduct: want x [B, in] and w [in, out], got %s and %s", x.Shape(), w.Shape()))
	}
	return stepEinsum(cfg, "bd,de->be", x, w)
}

// stepEinsum is ComputeEinsum(cfg, equation, x, w) for x [B, in] whose rows are padded to
// cfg.StepRows for the product and cut back to B after it.
func stepEinsum(cfg Config, equation string, x, w *Node) *Node {
	xp, cut := padStepRows(cfg, x, 0)
	return cut(ComputeEinsum(cfg, equation, xp, w))
}
