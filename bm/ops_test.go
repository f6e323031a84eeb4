package bm

import (
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	_ "github.com/gomlx/gomlx/backends/xla"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"blackmamba/xla"
)

// cpuBackend returns the backend of the tests of this package: the pure-Go CPU backend, or the
// one named by $BLACKMAMBA_TEST_BACKEND.
func cpuBackend(t testing.TB) backends.Backend {
	t.Helper()
	testBackendOnce.Do(func() {
		if env := os.Getenv(TestBackendEnv); env != "" {
			// Through xla.New, as the commands create theirs, so that the process's settings
			// apply (BLACKMAMBA_GPU_MEMORY=grow lets several test processes share a GPU).
			testBackendVal, _, testBackendErr = xla.New(env)
			return
		}
		testBackendVal, testBackendErr = backends.NewWithConfig(xla.CPUConfig)
	})
	if testBackendErr != nil {
		t.Fatalf("cannot create the test backend: %v", testBackendErr)
	}
	return testBackendVal
}

// TestBackendEnv names the environment variable that runs the package's tests on another
// backend than the pure-Go CPU one, e.g. BLACKMAMBA_TEST_BACKEND="xla:/path/to/pjrt_plugin.so"
// to run the test binary on a GPU.
const TestBackendEnv = "BLACKMAMBA_TEST_BACKEND"

var (
	testBackendOnce sync.Once
	testBackendVal  backends.Backend
	testBackendErr  error
)

// TestSliceVJP checks the Pad-free Slice gradient against central finite differences (float64)
// for the slicing helpers that lower to Slice: f(x) = Σ w ⊙ op(x) with random x and w, so the
// exact gradient is w scattered back into the sliced positions.
func TestSliceVJP(t *testing.T) {
	backend := cpuBackend(t)
	dims := []int{3, 5, 4}
	cases := []struct {
		name string
		op   func(x *Node) *Node
	}{
		{"SliceAxis", func(x *Node) *Node { return SliceAxis(x, 1, AxisRange(1, 4)) }},
		{"SliceAllAxes", func(x *Node) *Node { return Slice(x, AxisRange(1, 3), AxisRange(0, 2), AxisRange(2, 4)) }},
		{"SliceStride2", func(x *Node) *Node { return Slice(x, AxisRange(), AxisRange().Stride(2), AxisRange(1, 4)) }},
		{"SliceStride3Offset", func(x *Node) *Node { return Slice(x, AxisRange(0, 3).Stride(2), AxisRange(1).Stride(3)) }},
		{"SplitMiddle", func(x *Node) *Node { return Mul(Split(x, 2, 2)[1], Split(x, 2, 2)[0]) }},
		{"ShiftRight", func(x *Node) *Node { return ShiftWithScalar(x, 1, ShiftDirRight, 2, 0.5) }},
		{"ShiftLeft", func(x *Node) *Node { return ShiftWithScalar(x, 2, ShiftDirLeft, 1, 0) }},
		{"Nested", func(x *Node) *Node { return SliceAxis(SliceAxis(Exp(x), 0, AxisRange(1)), 1, AxisRange(0, 3)) }},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	size := 1
	for _, d := range dims {
		size *= d
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			xData := make([]float64, size)
			for i := range xData {
				xData[i] = rng.NormFloat64()
			}
			// The weights w get the output's shape, which the graph learns when it is built.
			wSeed := rng.Uint64()
			loss := func(x *Node) *Node {
				y := tc.op(x)
				_, w := RandomNormal(RNGStateFromSeedForGraph(x.Graph(), int64(wSeed>>1)), y.Shape())
				return ReduceAllSum(Mul(y, w))
			}
			fExec := MustNewExec(backend, loss)
			gExec := MustNewExec(backend, func(x *Node) *Node { return Gradient(loss(x), x)[0] })
			eval := func(data []float64) float64 {
				out := fExec.MustExec(tensors.FromFlatDataAndDimensions(data, dims...))[0]
				return tensors.ToScalar[float64](out)
			}
			grad := tensors.MustCopyFlatData[float64](gExec.MustExec(tensors.FromFlatDataAndDimensions(xData, dims...))[0])
			const eps = 1e-5
			maxErr := 0.0
			for i := range xData {
				orig := xData[i]
				xData[i] = orig + eps
				fp := eval(xData)
				xData[i] = orig - eps
				fm := eval(xData)
				xData[i] = orig
				fd := (fp - fm) / (2 * eps)
				maxErr = max(maxErr, math.Abs(fd-grad[i])/(1+math.Abs(fd)))
			}
			// float64 central differences of a function that is at most quadratic here
			// (Exp in "Nested" adds an O(eps²) term): agreement to ~1e-8.
			if maxErr > 1e-7 {
				t.Errorf("%s: max relative gradient error vs finite differences = %.3g > 1e-7", tc.name, maxErr)
			}
		})
	}
}
