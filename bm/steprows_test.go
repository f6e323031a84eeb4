package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// TestStepProduct checks that padding the rows of a step product changes nothing: for batches
// of 1 to 3 rows and StepRows 0 to 4 (padding only where StepRows exceeds the batch), the
// result equals the unpadded product to 1e-6 relative, in float32 and bfloat16.
func TestStepProduct(t *testing.T) {
	backend := cpuBackend(t)
	rng := rand.New(rand.NewPCG(5, 6))
	const in, out = 24, 40
	w := make([]float32, in*out)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for _, dtype := range []string{"float32", "bfloat16"} {
		cfg := MustPreset("tiny")
		cfg.ComputeDType = dtype
		for B := 1; B <= 3; B++ {
			x := make([]float32, B*in)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			xt := tensors.FromFlatDataAndDimensions(x, B, in)
			wt := tensors.FromFlatDataAndDimensions(w, in, out)
			var want []float32
			for _, rows := range []int{0, 1, 2, 3, 4} {
				c := cfg
				c.StepRows = rows
				got := MustExecOnce(backend, func(x, w *Node) *Node { return StepProduct(c, x, w) }, xt, wt)
				if dims := got.Shape().Dimensions; !slices.Equal(dims, []int{B, out}) {
					t.Fatalf("%s B=%d rows=%d: result %v, want [%d %d]", dtype, B, rows, dims, B, out)
				}
				v := tensors.MustCopyFlatData[float32](got)
				if rows == 0 {
					want = v
					continue
				}
				scale := 0.0
				for _, f := range want {
					scale = math.Max(scale, math.Abs(float64(f)))
				}
				for i := range v {
					if d := math.Abs(float64(v[i] - want[i])); d > 1e-6*scale {
						t.Fatalf("%s B=%d rows=%d: element %d is %g, unpadded %g", dtype, B, rows, i, v[i], want[i])
					}
				}
			}
		}
	}
}

// TestStepRowsGreedyTokens checks that batch-1 greedy decoding with the step products padded
// to 2 rows (what a GPU run uses against XLA's single-row rewrite) gives exactly the tokens of
// the unpadded decoder, for the four small architectures, one step per call and unrolled.
func TestStepRowsGreedyTokens(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen = 20
	for _, cfg := range DecodeCheckConfigs() {
		for _, unroll := range []int{1, 4} {
			t.Run(fmt.Sprintf("%s/unroll%d", cfg.Name, unroll), func(t *testing.T) {
				var want []int
				for _, rows := range []int{0, 2} {
					c := cfg
					c.StepRows = rows
					ctx := context.New()
					ctx.SetParam(initializers.ParamInitialSeed, int64(4))
					dec, err := NewDecoder(backend, ctx, c, 1, maxLen)
					if err != nil {
						t.Fatal(err)
					}
					g := NewGreedyDecoder(dec)
					g.Unroll = unroll
					got, err := g.GenerateGreedy([]int{3, 1, 4}, maxLen-3)
					g.Release()
					if err != nil {
						t.Fatal(err)
					}
					if rows == 0 {
						want = got
					} else if !slices.Equal(got, want) {
						t.Errorf("step rows %d: tokens %v, unpadded %v", rows, got, want)
					}
				}
			})
		}
	}
}

// TestStepRowsValidation checks the bounds of step_rows and StepProduct's shape check.
func TestStepRowsValidation(t *testing.T) {
	for _, rows := range []int{-1, MaxStepRows + 1} {
		c := MustPreset("tiny")
		c.StepRows = rows
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "step_rows") {
			t.Errorf("step_rows %d: error %v, want one naming step_rows", rows, err)
		}
	}
	c := MustPreset("tiny")
	c.StepRows = MaxStepRows
	if err := c.Validate(); err != nil {
		t.Errorf("step_rows %d: %v", MaxStepRows, err)
	}
	backend := cpuBackend(t)
	var msg string
	func() {
		defer func() { msg = fmt.Sprint(recover()) }()
		MustExecOnce(backend, func(x, w *Node) *Node { return StepProduct(c, x, w) },
			tensors.FromValue([][]float32{{1, 2, 3}}), tensors.FromValue([][]float32{{1}, {2}}))
	}()
	if !strings.Contains(msg, "StepProduct") {
		t.Errorf("mismatched shapes: panic %q, want one naming StepProduct", msg)
	}
}
