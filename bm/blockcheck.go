package bm

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// CheckBlocks runs self-checks of the MoE, Sinkhorn and attention blocks on a backend (meant
// for the GPU, where the unit tests do not run), comparing paths that must agree:
//
//   - MoE: the blocked dispatch (automatic block size and block 1) against running every
//     expert on every token and masking, on 512 tokens, d=64, F=128, 8 experts;
//   - Sinkhorn, both variants: graph against the float64 reference on 1024×8 logits
//     (at most 0.5% of choices may differ, near ties; rounds within ±1);
//   - attention decoding: prefill of 1 token then 15 steps against the full forward, with the
//     cache written by DynamicUpdateSlice (when the backend has it) and by the masked select,
//     and the two writes compared for equality.
//
// Tolerances are relative to the largest reference value: 1e-2, loose enough for TF32
// matmuls. It returns one line per check and an error listing the failures.
func CheckBlocks(backend backends.Backend) (report []string, err error) {
	var failures []string
	record := func(name string, diff, tol float64) {
		line := fmt.Sprintf("%-44s max rel diff %.3g (tol %.0g)", name, diff, tol)
		if !(diff <= tol) {
			line += "  FAIL"
			failures = append(failures, line)
		}
		report = append(report, line)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	relDiff := func(a, b *tensors.Tensor) float64 {
		x, y := checkFloats(a), checkFloats(b)
		if len(x) != len(y) {
			return math.Inf(1)
		}
		diff, scale := 0.0, 0.0
		for i := range x {
			diff = max(diff, math.Abs(x[i]-y[i]))
			scale = max(scale, math.Abs(y[i]))
		}
		return diff / max(scale, 1e-30)
	}

	cfg := MustPreset("tiny")
	cfg.Dim, cfg.FFN, cfg.Heads, cfg.InitStd = 64, 128, 4, 0.1

	// MoE dispatch against the dense run-all-experts computation.
	const experts = 8
	x := RandomTensor(rng, 1, 2, 256, cfg.Dim)
	for _, block := range []int{0, 1} {
		ctx := context.New()
		ctx.SetParam(initializers.ParamInitialSeed, int64(5))
		ctx.SetParam(ParamMoEBlock, block)
		outs, e := context.MustNewExec(backend, ctx, func(ctx *context.Context, x *Node) []*Node {
			r := MoEWithStats(ctx.In("moe"), cfg, experts, x, RoutingArgmax)
			flat, _ := flattenTokens(x)
			dense := MoEDense(ctx.In("moe").Reuse(), cfg, experts, flat, r.Choice)
			return []*Node{Reshape(r.Out, -1, cfg.Dim), dense}
		}).Exec(x)
		if e != nil {
			return report, fmt.Errorf("MoE check (block %d): %w", block, e)
		}
		record(fmt.Sprintf("MoE dispatch vs dense (block %d)", block), relDiff(outs[0], outs[1]), 1e-2)
	}

	// Sinkhorn against the float64 reference.
	const numT, numE = 1024, 8
	logits := RandomTensor(rng, 1, numT, numE)
	lv := checkFloats(logits)
	rows := make([][]float64, numT)
	for t := range rows {
		rows[t] = lv[t*numE : (t+1)*numE]
	}
	for _, variant := range []string{RoutingSinkhorn, RoutingSinkhornVanilla} {
		outs, e := MustNewExec(backend, func(l *Node) []*Node {
			c, it := SinkhornRoute(l, variant, SinkhornUnrollMax, 1e-4)
			return []*Node{c, it}
		}).Exec(logits)
		if e != nil {
			return report, fmt.Errorf("Sinkhorn check (%s): %w", variant, e)
		}
		ref, refRounds, _ := SinkhornReference(rows, variant, SinkhornUnrollMax, 1e-4)
		got := checkFloats(outs[0])
		differ := 0
		for i := range ref {
			if int(got[i]) != ref[i] {
				differ++
			}
		}
		rounds := int(checkFloats(outs[1])[0])
		record(fmt.Sprintf("Sinkhorn %s choices differing", variant), float64(differ)/numT, 0.005)
		record(fmt.Sprintf("Sinkhorn %s rounds %d vs reference %d", variant, rounds, refRounds), math.Abs(float64(rounds-refRounds)), 1)
	}

	// Attention decoding against the full forward, with both cache writes.
	const numB, seqLen = 2, 16
	u := RandomTensor(rng, 1, numB, seqLen, cfg.Dim)
	uv := checkFloats(u)
	var caches [2][2]*tensors.Tensor
	for mi, method := range []string{"auto", "masked"} {
		ctx := context.New()
		ctx.SetParam(initializers.ParamInitialSeed, int64(6))
		ctx.SetParam(ParamCacheWrite, method)
		full, e := context.MustNewExec(backend, ctx, func(ctx *context.Context, u *Node) *Node {
			return Attention(ctx.In("attn"), cfg, u)
		}).Exec(u)
		if e != nil {
			return report, fmt.Errorf("attention check: %w", e)
		}
		fv := checkFloats(full[0])
		token := func(p int) *tensors.Tensor {
			v := make([]float32, 0, numB*cfg.Dim)
			for b := range numB {
				for _, f := range uv[(b*seqLen+p)*cfg.Dim : (b*seqLen+p+1)*cfg.Dim] {
					v = append(v, float32(f))
				}
			}
			return tensors.FromFlatDataAndDimensions(v, numB, 1, cfg.Dim)
		}
		pre, e := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, u *Node) (*Node, *Node, *Node) {
			return AttentionPrefill(ctx.In("attn"), cfg, u, seqLen)
		}).Exec(token(0))
		if e != nil {
			return report, fmt.Errorf("attention prefill check: %w", e)
		}
		step := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, u, pos, k, v *Node) (*Node, *Node, *Node) {
			return AttentionStep(ctx.In("attn"), cfg, Reshape(u, numB, cfg.Dim), pos, k, v)
		})
		k, v := pre[1], pre[2]
		worst := relDiffRows(checkFloats(pre[0]), fv, numB, seqLen, cfg.Dim, 0)
		for p := 1; p < seqLen; p++ {
			outs, e := step.Exec(token(p), tensors.FromScalar(int32(p)), k, v)
			if e != nil {
				return report, fmt.Errorf("attention step check (%s): %w", method, e)
			}
			worst = max(worst, relDiffRows(checkFloats(outs[0]), fv, numB, seqLen, cfg.Dim, p))
			k, v = outs[1], outs[2]
		}
		caches[mi] = [2]*tensors.Tensor{k, v}
		record(fmt.Sprintf("attention decode vs full (cache write %s)", method), worst, 1e-2)
	}
	record("KV cache: auto write vs masked write", max(relDiff(caches[0][0], caches[1][0]), relDiff(caches[0][1], caches[1][1])), 0)

	if len(failures) > 0 {
		return report, errors.New("bm.CheckBlocks failed:\n" + fmt.Sprint(failures))
	}
	return report, nil
}

// relDiffRows compares one position's outputs [B·d] with position p of full outputs
// [B, T, d], relative to the largest full value at that position.
func relDiffRows(got, full []float64, numB, numT, d, p int) float64 {
	diff, scale := 0.0, 0.0
	for b := range numB {
		for i := range d {
			w := full[(b*numT+p)*d+i]
			diff = max(diff, math.Abs(got[b*d+i]-w))
			scale = max(scale, math.Abs(w))
		}
	}
	return diff / max(scale, 1e-30)
}

// RandomTensor returns a [dims...] float32 tensor of N(0, std²) values drawn from rng: the
// inputs of the self-checks and benchmarks (never all zeros).
func RandomTensor(rng *rand.Rand, std float64, dims ...int) *tensors.Tensor {
	n := 1
	for _, d := range dims {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * std)
	}
	return tensors.FromFlatDataAndDimensions(v, dims...)
}

// checkFloats returns the values of a float32, float64 or int32 tensor as float64.
func checkFloats(t *tensors.Tensor) []float64 {
	var out []float64
	switch t.DType() {
	case dtypes.Float32:
		for _, v := range tensors.MustCopyFlatData[float32](t) {
			out = append(out, float64(v))
		}
	case dtypes.Float64:
		out = tensors.MustCopyFlatData[float64](t)
	case dtypes.Int32:
		for _, v := range tensors.MustCopyFlatData[int32](t) {
			out = append(out, float64(v))
		}
	default:
		panic(fmt.Sprintf("bm.CheckBlocks: unexpected dtype %s", t.DType()))
	}
	return out
}

// MoEDense runs every expert on every token x [T, d] and keeps the chosen one's output, times
// the gate: E times the FLOPs of MoE, with MoE's variables. It is the reference of CheckBlocks
// and the "run all experts and mask" baseline of the MoE benchmark; choice nil means argmax of
// the router logits.
func MoEDense(ctx *context.Context, cfg Config, experts int, x, choice *Node) *Node {
	w := moeVariables(ctx, x.Graph(), cfg, experts)
	logits := Add(Einsum("td,de->te", x, w.routerW), InsertAxes(w.routerB, 0))
	if choice == nil {
		choice = ArgMax(logits, -1, dtypes.Int32)
	}
	h := ComputeEinsum(cfg, "td,edf->etf", x, w.fc1)
	ys := ComputeEinsum(cfg, "etf,efd->etd", gatedActivation(cfg, h), w.fc2) // [E, T, d]
	oneHot := OneHot(choice, experts, dtypes.Float32)                        // [T, E]
	gate := ReduceSum(Mul(Sigmoid(logits), oneHot), -1)
	y := ReduceSum(Mul(ys, InsertAxes(Transpose(oneHot, 0, 1), -1)), 0)
	return Mul(y, InsertAxes(gate, -1))
}
