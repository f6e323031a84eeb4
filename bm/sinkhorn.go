package bm

import (
	"fmt"
	"math"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// Sinkhorn expert assignment (SPEC.md §3).
//
// Given router logits ℓ [T, E] and a cost C, Sinkhorn alternates
//
//	d0_t = (1/T) / (Σ_j d1_j C_tj + 1e-8)
//	d1_j = (1/E) / (Σ_t d0_t C_tj + 1e-8)
//
// until mean_j |Δd1_j| < tol, and assigns token t to argmax_j d0_t C_tj d1_j, which is
// argmax_j (log C_tj + log d1_j) since d0_t does not depend on j. Two variants:
//
//   - RoutingSinkhorn (BlackMamba): C = exp(2ℓ), d1 starts at 1/(E·Σ_t C_tj).
//   - RoutingSinkhornVanilla (Megatron-LM): C = exp(ℓ), d1 starts at 1.
//
// The graph version works on log d0, log d1 and log C, so no exponential of a logit is ever
// formed: every sum of exponentials is a log-sum-exp with its maximum subtracted, and the
// 1e-8 terms enter through LogAddExp. It is the same iteration as the formula above, without
// overflow for large logits or underflow for small ones. The stopping test compares
// exp(log d1) values, i.e. d1 on the scale of the formula above (unshifted costs), so the
// number of rounds is the one the linear formula would take.
//
// Note on BlackMamba's variant: its d1 is of order 1/(E·T·mean C), so with T in the thousands
// the absolute tolerance 1e-4 on d1 is met after the first round whatever the logits; that is
// why it "converges in one round". The vanilla variant has d1 of order 1 and takes several.
//
// GoMLX has no loop op, so the rounds are unrolled: round 0 always runs, and every later round
// is computed but frozen by Where once the stopping test has passed. The graph therefore always
// costs maxIter rounds of O(T·E) work (about 12 elementwise or reduce ops on [T, E] each); the
// returned iteration count says how many rounds were actually needed.

// sinkhornLogEps is log(1e-8), the stabiliser of the Sinkhorn denominators.
var sinkhornLogEps = math.Log(1e-8)

// SinkhornUnrollMax caps the number of Sinkhorn rounds MoE unrolls into its training graph
// (cfg.SinkhornMaxIter larger than this is reduced to it). BlackMamba's variant needs one round
// in the usual regime and vanilla Sinkhorn a handful (3–18 reported for Megatron); 32 rounds
// keep the graph small while leaving room for vanilla Sinkhorn on skewed logits. When the cap
// is hit before convergence, the returned iteration count equals the cap.
const SinkhornUnrollMax = 32

// SinkhornAutoBlackMamba is the number of rounds unrolled for BlackMamba's variant when the
// config leaves sinkhorn_max_iter at 0 (automatic). GoMLX has no loop, so every unrolled round
// is computed, frozen or not: on the CPU the 32-round graph took about 100 ms for 4,096 tokens
// where argmax takes 1 ms, and the rounds were over a third of the small model's training graph.
// BlackMamba's initialisation converges in one round in every run measured here (see the note
// at the top of this file), so 4 leaves a margin; a layer that hits the cap records 4 rounds in
// the training metrics (sinkhorn_iters/layer_NN), and an explicit sinkhorn_max_iter overrides it.
const SinkhornAutoBlackMamba = 4

// SinkhornRounds returns the number of Sinkhorn rounds MoE unrolls for route under cfg:
// cfg.SinkhornMaxIter when set (at most SinkhornUnrollMax), else SinkhornAutoBlackMamba for
// BlackMamba's variant and SinkhornUnrollMax for the vanilla one, which needs several rounds.
func SinkhornRounds(cfg Config, route string) int {
	if cfg.SinkhornMaxIter > 0 {
		return min(cfg.SinkhornMaxIter, SinkhornUnrollMax)
	}
	if route == RoutingSinkhorn {
		return SinkhornAutoBlackMamba
	}
	return SinkhornUnrollMax
}

// SinkhornRoute returns the Sinkhorn-balanced top-1 expert choice for router logits [T, E]
// (any float dtype; computed in float32 and detached from the gradient), for variant
// RoutingSinkhorn or RoutingSinkhornVanilla, running at most maxIter (≥ 1) rounds with stopping
// tolerance tol on mean|Δd1|.
//
// Returns choice [T] int32 and iters, a scalar int32: the number of rounds run until the
// stopping test passed (maxIter if it never did).
func SinkhornRoute(logits *Node, variant string, maxIter int, tol float64) (choice, iters *Node) {
	if logits.Rank() != 2 {
		panic(fmt.Sprintf("bm.SinkhornRoute: logits must be [T, E], got %s", logits.Shape()))
	}
	if maxIter < 1 {
		panic(fmt.Sprintf("bm.SinkhornRoute: maxIter must be >= 1, got %d", maxIter))
	}
	g := logits.Graph()
	l := StopGradient(ConvertDType(logits, dtypes.Float32))
	numT, numE := l.Shape().Dim(0), l.Shape().Dim(1)
	logT, logE := math.Log(float64(numT)), math.Log(float64(numE))

	var logC, logD1 *Node // [T, E], [E]
	switch variant {
	case RoutingSinkhorn:
		logC = MulScalar(l, 2)
		logD1 = Neg(AddScalar(logSumExp(logC, 0), logE))
	case RoutingSinkhornVanilla:
		logC = l
		logD1 = Zeros(g, shapes.Make(dtypes.Float32, numE))
	default:
		panic(fmt.Sprintf("bm.SinkhornRoute: unknown variant %q (want %q or %q)", variant, RoutingSinkhorn, RoutingSinkhornVanilla))
	}
	done := Const(g, false)
	iters = ScalarZero(g, dtypes.Int32)
	one := Scalar(g, dtypes.Int32, 1)
	for range maxIter {
		// log d0_t = −log T − log(Σ_j d1_j C_tj + 1e-8)
		logD0 := Neg(AddScalar(logAddExpConst(logSumExpFinite(Add(logC, InsertAxes(logD1, 0)), 1), sinkhornLogEps), logT))
		// log d1_j = −log E − log(Σ_t d0_t C_tj + 1e-8)
		newD1 := Neg(AddScalar(logAddExpConst(logSumExpFinite(Add(logC, InsertAxes(logD0, -1)), 0), sinkhornLogEps), logE))
		delta := ReduceAllMean(Abs(Sub(Exp(newD1), Exp(logD1))))
		logD1 = Where(done, logD1, newD1)
		iters = Add(iters, Where(done, ZerosLike(one), one))
		done = LogicalOr(done, LessThan(delta, Scalar(g, dtypes.Float32, tol)))
	}
	choice = ArgMax(Add(logC, InsertAxes(logD1, 0)), 1, dtypes.Int32)
	return choice, iters
}

// logSumExpFinite is logSumExp for finite x, without the guard for rows of −∞: inside the
// Sinkhorn rounds every term is finite (finite logits, and log d0, log d1 bounded by the 1e-8
// stabilisers), and the unrolled rounds are a large part of the training graph.
func logSumExpFinite(x *Node, axis int) *Node {
	m := ReduceAndKeep(x, ReduceMax, axis)
	return Squeeze(Add(Log(ReduceAndKeep(Exp(Sub(x, m)), ReduceSum, axis)), m), axis)
}

// logAddExpConst returns log(exp(x) + exp(c)) for finite x and a constant c:
// max(x, c) + log1p(exp(−|x − c|)).
func logAddExpConst(x *Node, c float64) *Node {
	return Add(MaxScalar(x, c), Log1p(Exp(Neg(Abs(AddScalar(x, -c))))))
}

// logSumExp returns log Σ exp(x) over axis, with the maximum subtracted first. Rows that are
// entirely −∞ give −∞.
func logSumExp(x *Node, axis int) *Node {
	m := StopGradient(ReduceAndKeep(x, ReduceMax, axis))
	safeM := Where(IsFinite(m), m, ZerosLike(m))
	s := Log(ReduceAndKeep(Exp(Sub(x, safeM)), ReduceSum, axis))
	return Squeeze(Add(s, safeM), axis)
}

// SinkhornReference is the plain float64 Sinkhorn of SPEC.md §3, written with the linear
// formula (exponentials of the raw logits, the 1e-8 stabilisers, no max subtraction): the
// reference the graph version is tested against. logits is [T][E]; variant and the stopping
// rule are those of SinkhornRoute. Returns the choice per token, the number of rounds run and
// the final d1 [E].
func SinkhornReference(logits [][]float64, variant string, maxIter int, tol float64) (choice []int, iters int, d1 []float64) {
	numT := len(logits)
	if numT == 0 {
		return nil, 0, nil
	}
	numE := len(logits[0])
	scale := 1.0
	switch variant {
	case RoutingSinkhorn:
		scale = 2
	case RoutingSinkhornVanilla:
	default:
		panic(fmt.Sprintf("bm.SinkhornReference: unknown variant %q", variant))
	}
	cost := make([][]float64, numT)
	for t, row := range logits {
		if len(row) != numE {
			panic(fmt.Sprintf("bm.SinkhornReference: logits row %d has %d entries, row 0 has %d", t, len(row), numE))
		}
		cost[t] = make([]float64, numE)
		for j, v := range row {
			cost[t][j] = math.Exp(scale * v)
		}
	}
	d1 = make([]float64, numE)
	for j := range d1 {
		if variant == RoutingSinkhorn {
			s := 0.0
			for t := range cost {
				s += cost[t][j]
			}
			d1[j] = 1 / (float64(numE) * s)
		} else {
			d1[j] = 1
		}
	}
	d0 := make([]float64, numT)
	for iters < maxIter {
		iters++
		for t := range cost {
			s := 0.0
			for j := range d1 {
				s += d1[j] * cost[t][j]
			}
			d0[t] = (1 / float64(numT)) / (s + 1e-8)
		}
		delta := 0.0
		for j := range d1 {
			s := 0.0
			for t := range cost {
				s += d0[t] * cost[t][j]
			}
			nd := (1 / float64(numE)) / (s + 1e-8)
			delta += math.Abs(nd - d1[j])
			d1[j] = nd
		}
		if delta/float64(numE) < tol {
			break
		}
	}
	choice = make([]int, numT)
	for t := range cost {
		best := 0
		for j := range d1 {
			if cost[t][j]*d1[j] > cost[t][best]*d1[best] {
				best = j
			}
		}
		choice[t] = best
	}
	return choice, iters, d1
}
