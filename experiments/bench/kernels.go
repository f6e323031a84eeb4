package bench

import (
	"fmt"
	"math"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Chain is one shape of the kernels benchmark: K dependent products of a row vector with a
// weight matrix, alternating [Out, In] and [In, Out] matrices (so the vector goes In → Out → In
// …), each followed by a tanh: x_{i+1} = tanh(W_i · x_i).
type Chain struct {
	In, Out, K int
	// Split passes each product's matrix as its own argument (K + 1 arguments per call, as a
	// decode step passes every weight of the model) instead of two stacked ones.
	Split bool
	// Rows, when above 1, makes the chain's input that many (equal) rows, so that each product
	// is a matrix multiplication of [Rows, In] with the matrix: XLA on a GPU keeps it a library
	// or Triton matrix multiplication, where it rewrites a row vector's product with a matrix
	// of fewer than 10M elements into an elementwise product and a reduction. 0 or 1: a vector.
	Rows int
}

// rows is the number of input rows of c, at least 1.
func (c Chain) rows() int { return max(c.Rows, 1) }

// DefaultChains are the shapes `blackmamba bench -what kernels` runs: tiny 64 × 64 products at
// 1, 16, 64 and 256 per call, whose times give the fixed cost of one call and of one dependent
// kernel, and products of the 1.5b model's in_proj size (1152 × 4608, 10.6 MB in bfloat16) at
// 2, 30 and 120 per call, whose times give what a product reading a weight matrix of that size
// costs; then 256 tiny and 30 large products with one argument per matrix, whose difference
// from the stacked ones is the cost of a call's arguments; then the 30 large products of two
// rows, matrix multiplications rather than reductions.
var DefaultChains = []Chain{{64, 64, 1, false, 0}, {64, 64, 16, false, 0}, {64, 64, 64, false, 0}, {64, 64, 256, false, 0},
	{1152, 4608, 2, false, 0}, {1152, 4608, 30, false, 0}, {1152, 4608, 120, false, 0}, {64, 64, 256, true, 0},
	{1152, 4608, 30, true, 0}, {1152, 4608, 30, false, 2}}

// The constants of the weights' hash (chainWeight and chainWeights compute the same values, on
// the host and in the graph) and their gain.
const (
	chainHashMul1, chainHashAdd, chainHashMul2 = 1103515245, 12345, 747796405
	chainHashMask                              = 0x7fffffff
	chainGain                                  = 2.5
)

// chainWeight is the value of element idx of the weight stacks: a pseudo-random number,
// uniform in [−1, 1) times chainGain/√in (a tanh chain that neither dies out nor saturates),
// from a multiply–xor hash of idx in int32 arithmetic (wrapping), the same on the host and in
// the graph.
func chainWeight(idx, in int) float64 {
	h := (int32(idx)*chainHashMul1 + chainHashAdd) & chainHashMask
	h = ((h ^ (h / 65536)) * chainHashMul2) & chainHashMask
	u := float32((h/65536)%2048-1024) / 1024
	return float64(u) * chainGain / math.Sqrt(float64(in))
}

// chainWeights builds in the graph the two weight stacks of c: [⌈K/2⌉, Out, In] and
// [⌊K/2⌋, In, Out] (at least one of each), of dtype.
func chainWeights(g *Graph, c Chain, dtype dtypes.DType) (wa, wb *Node) {
	stack := func(n, rows, cols, offset int) *Node {
		idx := AddScalar(IotaFull(g, shapes.Make(dtypes.Int32, max(n, 1), rows, cols)), offset)
		mask := Scalar(g, dtypes.Int32, chainHashMask)
		h := BitwiseAnd(AddScalar(MulScalar(idx, chainHashMul1), chainHashAdd), mask)
		h = BitwiseAnd(MulScalar(BitwiseXor(h, DivScalar(h, 65536)), chainHashMul2), mask)
		u := DivScalar(ConvertDType(AddScalar(ModScalar(DivScalar(h, 65536), 2048), -1024), dtypes.Float32), 1024)
		return ConvertDType(MulScalar(u, chainGain/math.Sqrt(float64(c.In))), dtype)
	}
	na, nb := (c.K+1)/2, c.K/2
	return stack(na, c.Out, c.In, 0), stack(nb, c.In, c.Out, max(na, 1)*c.Out*c.In)
}

// chainGraph returns the sum of squares of the entries of x_K (no cancellation, so bfloat16
// products can be checked with a relative tolerance), the end of c's chain from x0 [In] (or
// [Rows, In]) float32, with the products in dtype (each product's result converted to float32
// for the tanh); weight(i) is product i's matrix, [Out, In] for even i and [In, Out] for odd i.
func chainGraph(x0 *Node, weight func(i int) *Node, c Chain, dtype dtypes.DType) *Node {
	x := x0
	for i := range c.K {
		var p *Node
		if x.Rank() == 2 {
			p = Einsum("ab,rb->ra", weight(i), ConvertDType(x, dtype))
		} else {
			p = Dot(weight(i), ConvertDType(x, dtype))
		}
		x = Tanh(ConvertDType(p, dtypes.Float32))
	}
	return ReduceAllSum(Square(x))
}

// chainMatrix returns product i's matrix from the stacks wa and wb.
func chainMatrix(wa, wb *Node, c Chain, i int) *Node {
	if i%2 == 0 {
		return Reshape(SliceAxis(wa, 0, AxisElem(i/2)), c.Out, c.In)
	}
	return Reshape(SliceAxis(wb, 0, AxisElem(i/2)), c.In, c.Out)
}

// chainInput is x0 of the chains: x0[j] = cos(j)/2.
func chainInput(n int) []float32 {
	x := make([]float32, n)
	for j := range x {
		x[j] = float32(math.Cos(float64(j)) / 2)
	}
	return x
}

// chainInputTensor is c's input: chainInput(In) as a vector, or as each of Rows rows.
func chainInputTensor(c Chain) *tensors.Tensor {
	if c.rows() == 1 {
		return tensors.FromFlatDataAndDimensions(chainInput(c.In), c.In)
	}
	x := make([]float32, 0, c.rows()*c.In)
	for range c.rows() {
		x = append(x, chainInput(c.In)...)
	}
	return tensors.FromFlatDataAndDimensions(x, c.rows(), c.In)
}

// ChainReference computes the result of c's chain on the host in float64 from the same weights
// and input (for the tests); its Rows equal rows add up to Rows times one row's.
func ChainReference(c Chain) float64 {
	x := make([]float64, c.In)
	for j, v := range chainInput(c.In) {
		x[j] = float64(v)
	}
	na := max((c.K+1)/2, 1)
	for i := range c.K {
		rows, cols, base := c.Out, c.In, (i/2)*c.Out*c.In
		if i%2 == 1 {
			rows, cols, base = c.In, c.Out, na*c.Out*c.In+(i/2)*c.In*c.Out
		}
		y := make([]float64, rows)
		for r := range rows {
			var s float64
			for k := range cols {
				s += chainWeight(base+r*cols+k, c.In) * x[k]
			}
			y[r] = math.Tanh(s)
		}
		x = y
	}
	var sum float64
	for _, v := range x {
		sum += v * v
	}
	return sum * float64(c.rows())
}

// Kernels times each chain of chains in dtype: the weights are made on the device once and
// passed to every call as arguments (two stacks, or one buffer per matrix with Chain.Split),
// like a decode step's, and each call fetches the scalar
// result (which waits for the device). A backend that turns each product into one kernel (XLA
// on a GPU: a reduction fusion with the tanh and the conversions fused in) runs K dependent
// kernels per call, so the rows measure what a batch-1 decode step is made of without the
// model: Ms per call, Extra us_per_product (Ms/K), weight_bytes (the K matrices) and
// weight_gb_per_s (those bytes over Ms), and result (the chain's value, checked against
// ChainReference by the tests).
func Kernels(backend backends.Backend, chains []Chain, dtype dtypes.DType, reps int) []Row {
	var rows []Row
	for _, c := range chains {
		variant := fmt.Sprintf("chain of %d products", c.K)
		if c.Split {
			variant += ", a buffer each"
		}
		if c.rows() > 1 {
			variant += fmt.Sprintf(", %d rows", c.rows())
		}
		row := Row{Bench: "kernels", Variant: variant,
			Shape: fmt.Sprintf("%d x %d, %s", c.In, c.Out, dtype), Reps: reps, PeakBytes: -1}
		if c.In < 1 || c.Out < 1 || c.K < 1 || reps < 1 || c.Rows < 0 {
			row.Err = fmt.Sprintf("kernels: in (%d), out (%d), products (%d) and reps (%d) must be positive, rows (%d) not negative", c.In, c.Out, c.K, reps, c.Rows)
			rows = append(rows, row)
			emit(&row)
			continue
		}
		var result float64
		nArgs := 0
		err := catch(func() error {
			mk, err := NewExec(backend, func(g *Graph) []*Node {
				wa, wb := chainWeights(g, c, dtype)
				if !c.Split {
					return []*Node{wa, wb}
				}
				ws := make([]*Node, c.K)
				for i := range ws {
					ws[i] = chainMatrix(wa, wb, c, i)
				}
				return ws
			})
			if err != nil {
				return err
			}
			ws, err := mk.Exec()
			mk.Finalize()
			if err != nil {
				return err
			}
			defer finalize(ws)
			e, err := NewExec(backend, func(inputs []*Node) *Node {
				x, ws := inputs[0], inputs[1:]
				weight := func(i int) *Node { return chainMatrix(ws[0], ws[1], c, i) }
				if c.Split {
					weight = func(i int) *Node { return ws[i] }
				}
				return chainGraph(x, weight, c, dtype)
			})
			if err != nil {
				return err
			}
			defer e.Finalize()
			args := []any{chainInputTensor(c)}
			for _, w := range ws {
				args = append(args, w)
			}
			nArgs = len(args)
			call := func() error {
				outs, err := e.Exec(args...)
				if err != nil {
					return err
				}
				result = float64(tensors.ToScalar[float32](outs[0]))
				finalize(outs)
				return nil
			}
			row.CompileS, row.Ms, row.MinMs, err = timeCalls(call, 3, reps)
			return err
		})
		if err != nil {
			row.Err = err.Error()
		} else {
			bytes := float64(c.K) * float64(c.In*c.Out) * float64(dtype.Size())
			row.Extra = map[string]float64{
				"us_per_product":  1000 * row.Ms / float64(c.K),
				"weight_bytes":    bytes,
				"weight_gb_per_s": bytes / (row.Ms / 1000) / 1e9,
				"result":          result,
				"arguments":       float64(nArgs),
			}
		}
		rows = append(rows, row)
		emit(&row)
	}
	return rows
}
