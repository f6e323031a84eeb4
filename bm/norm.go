package bm

import (
	"fmt"
	"math"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// This file holds the normalisations and the small numerical conventions shared by every block:
// the compute dtype of matmuls, the MLP activation and the initialisation of linear weights.

// RMSNorm normalises x over its last axis: y = x / sqrt(mean(x²) + eps) · w, with one learned
// variable "weight" [d] (initialised to 1) in the scope of ctx. x: [..., d] of any float dtype;
// the result is float32 (the statistics are always computed in float32). Differentiable: it
// uses Sqrt and Div (Rsqrt has no gradient in GoMLX).
func RMSNorm(ctx *context.Context, x *Node, eps float64) *Node {
	x = ConvertDType(x, dtypes.Float32)
	d := x.Shape().Dim(-1)
	w := ctx.WithInitializer(initializers.One).
		VariableWithShape("weight", shapes.Make(dtypes.Float32, d)).ValueGraph(x.Graph())
	ms := ReduceAndKeep(Square(x), ReduceMean, -1)
	return Mul(Div(x, Sqrt(AddScalar(ms, eps))), ExpandLeftToRank(w, x.Rank()))
}

// LayerNorm normalises x over its last axis to zero mean and unit variance and applies a
// learned affine map: y = (x − mean) / sqrt(var + eps) · w + b, variables "weight" [d]
// (initialised to 1) and "bias" [d] (initialised to 0) in the scope of ctx. The variance is the
// biased one (mean of squares), as in PyTorch. x: [..., d]; the result is float32.
func LayerNorm(ctx *context.Context, x *Node, eps float64) *Node {
	x = ConvertDType(x, dtypes.Float32)
	w, b := layerNormVariables(ctx, x)
	centred := Sub(x, ReduceAndKeep(x, ReduceMean, -1))
	variance := ReduceAndKeep(Square(centred), ReduceMean, -1)
	return Add(Mul(Div(centred, Sqrt(AddScalar(variance, eps))), w), b)
}

// layerNormVariables returns LayerNorm's weight and bias in the scope of ctx, expanded to the
// rank of x [..., d].
func layerNormVariables(ctx *context.Context, x *Node) (w, b *Node) {
	g, d := x.Graph(), x.Shape().Dim(-1)
	w = ctx.WithInitializer(initializers.One).
		VariableWithShape("weight", shapes.Make(dtypes.Float32, d)).ValueGraph(g)
	b = ctx.WithInitializer(initializers.Zero).
		VariableWithShape("bias", shapes.Make(dtypes.Float32, d)).ValueGraph(g)
	return ExpandLeftToRank(w, x.Rank()), ExpandLeftToRank(b, x.Rank())
}

// layerNormOnePass is LayerNorm with the mean and the mean square of x from one reduction of
// the two stacked ([..., 2, d]), the variance as their difference: the same values up to
// rounding (the variance loses precision only when the mean is far larger than the spread).
// A decoding step uses it for the final norm (Config.StepFuse "head"): there the mean of x,
// the last block's product, would otherwise be a sum of a sum, which a GPU compiler (XLA)
// merges into one sum over the block's weights, reading them a second time.
func layerNormOnePass(ctx *context.Context, x *Node, eps float64) *Node {
	x = ConvertDType(x, dtypes.Float32)
	w, b := layerNormVariables(ctx, x)
	moments := ReduceAndKeep(Concatenate([]*Node{InsertAxes(x, -2), InsertAxes(Square(x), -2)}, -2), ReduceMean, -1) // [..., 2, 1]
	mean := Squeeze(SliceAxis(moments, -2, AxisElem(0)), -1)                                                         // [..., 1]
	meanSq := Squeeze(SliceAxis(moments, -2, AxisElem(1)), -1)
	variance := Max(Sub(meanSq, Square(mean)), ZerosLike(mean))
	return Add(Mul(Mul(Sub(x, mean), Rsqrt(AddScalar(variance, eps))), w), b)
}

// ComputeDType returns the dtype of matmul operands for cfg: BFloat16 when cfg.ComputeDType is
// "bfloat16", Float32 otherwise.
func ComputeDType(cfg Config) dtypes.DType {
	if cfg.ComputeDType == "bfloat16" {
		return dtypes.BFloat16
	}
	return dtypes.Float32
}

// ComputeEinsum is Einsum with both operands converted to the compute dtype of cfg and the
// result converted back to float32. Every weight matmul of the blocks goes through it, so that
// "bfloat16" means: bf16 operands, float32 everything else.
func ComputeEinsum(cfg Config, equation string, lhs, rhs *Node) *Node {
	dt := ComputeDType(cfg)
	return ConvertDType(Einsum(equation, ConvertDType(lhs, dt), ConvertDType(rhs, dt)), dtypes.Float32)
}

// Activate applies the MLP activation named by cfg.Activation, in float32: "silu" (also the
// default for an empty name) is x·sigmoid(x); "gelu" is the exact x·Φ(x) = x/2·(1 + erf(x/√2)).
func Activate(cfg Config, x *Node) *Node {
	x = ConvertDType(x, dtypes.Float32)
	switch cfg.Activation {
	case "", "silu":
		return Mul(x, Sigmoid(x))
	case "gelu":
		return Mul(MulScalar(x, 0.5), OnePlus(Erf(MulScalar(x, 1/math.Sqrt2))))
	default:
		panic(fmt.Sprintf("bm: config %q: unknown activation %q (want silu or gelu)", cfg.Name, cfg.Activation))
	}
}

// OutProjScale is the factor applied to the initial standard deviation of output projections
// (out_proj of the Mamba mixer, fc2 of experts and MLPs, wo of attention): 1/sqrt(L) with L the
// number of residual blocks of cfg (SPEC.md §2, initialisation), so that the residual stream's
// variance does not grow with depth.
func OutProjScale(cfg Config) float64 {
	n := len(cfg.Blocks())
	if n < 1 {
		n = 1
	}
	return 1 / math.Sqrt(float64(n))
}

// linearInit returns ctx with a normal initializer of standard deviation cfg.InitStd, times
// OutProjScale(cfg) when outProj is set. It falls back to 0.02 when cfg.InitStd is not set.
func linearInit(ctx *context.Context, cfg Config, outProj bool) *context.Context {
	std := cfg.InitStd
	if std <= 0 {
		std = 0.02
	}
	if outProj {
		std *= OutProjScale(cfg)
	}
	return ctx.WithInitializer(initializers.RandomNormalFn(ctx, std))
}

// weightVar creates (or reuses) a float32 weight of the given dimensions in the scope of ctx,
// initialised as described in linearInit, and returns its value in graph g.
//
// A variable of that name and dimensions that already holds another dtype (a bfloat16 copy made
// by CastWeights for inference) is used as it is.
func weightVar(ctx *context.Context, g *Graph, cfg Config, name string, outProj bool, dims ...int) *Node {
	if v := castVariable(ctx, name, dims...); v != nil {
		return v.ValueGraph(g)
	}
	return linearInit(ctx, cfg, outProj).VariableWithShape(name, shapes.Make(dtypes.Float32, dims...)).ValueGraph(g)
}
