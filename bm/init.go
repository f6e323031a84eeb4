package bm

import (
	"math"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// Initialisation for training from scratch (SPEC.md §2).
//
//   - Linear weights (in_proj, x_proj, experts' fc1, MLP fc1, attention q/k/v): N(0, InitStd).
//   - Output projections (out_proj, fc2, wo): N(0, InitStd/sqrt(number of blocks)).
//   - Embedding: N(0, InitStd).
//   - conv1d weight and bias: U(±1/sqrt(K)) (PyTorch's default for a depthwise Conv1d, fan-in K).
//   - dt_proj weight: U(±R^{-1/2}).
//   - dt_proj bias: softplus⁻¹(dt) with dt = exp(U(ln DtMin, ln DtMax)) floored at DtFloor, so
//     that softplus(bias) starts log-uniform in [DtMin, DtMax].
//   - A_log[c, n] = ln(n+1), so A = −exp(A_log) = −1, −2, …, −N in every channel.
//   - D (skip) = 1; norm weights 1; biases 0 (router bias, LayerNorm bias).

// uniformInit returns an initializer drawing U(−bound, bound) from the context's random state.
func uniformInit(ctx *context.Context, bound float64) initializers.VariableInitializer {
	return initializers.RandomUniformFn(ctx, -bound, bound)
}

// dtBiasInit returns the initializer of dt_proj's bias [D]: the inverse softplus of a dt drawn
// log-uniformly in [cfg.DtMin, cfg.DtMax] and floored at cfg.DtFloor.
func dtBiasInit(ctx *context.Context, cfg Config) initializers.VariableInitializer {
	return func(g *Graph, shape shapes.Shape) *Node {
		u := ctx.RandomUniform(g, shapes.Make(dtypes.Float64, shape.Dimensions...))
		lo, hi := math.Log(cfg.DtMin), math.Log(cfg.DtMax)
		dt := Exp(AddScalar(MulScalar(u, hi-lo), lo))
		dt = MaxScalar(dt, cfg.DtFloor)
		// softplus⁻¹(dt) = log(exp(dt) − 1) = dt + log(−expm1(−dt)), stable for small dt.
		inv := Add(dt, Log(Neg(Expm1(Neg(dt)))))
		return ConvertDType(inv, shape.DType)
	}
}

// aLogInit initialises A_log [D, N] to ln(n+1) along the state axis.
func aLogInit(g *Graph, shape shapes.Shape) *Node {
	n := Iota(g, shapes.Make(dtypes.Float64, shape.Dimensions...), shape.Rank()-1)
	return ConvertDType(Log(AddScalar(n, 1)), shape.DType)
}

// embeddingInit returns the N(0, InitStd) initializer of the embedding table.
func embeddingInit(ctx *context.Context, cfg Config) initializers.VariableInitializer {
	std := cfg.InitStd
	if std <= 0 {
		std = 0.02
	}
	return initializers.RandomNormalFn(ctx, std)
}

// NoWeightDecay reports whether the variable name in scope should be excluded from weight
// decay: A_log and D of the Mamba mixers, every normalisation weight (scopes ending in "norm"
// or "layernorm") and every bias. Trainers that apply decoupled weight decay call it per
// variable (e.g. with v.Scope() and v.Name()).
func NoWeightDecay(scope, name string) bool {
	switch {
	case name == "A_log" || name == "D":
		return true
	case name == "bias" || strings.HasSuffix(name, "_bias"):
		return true
	}
	last := scope[strings.LastIndex(scope, "/")+1:]
	return strings.HasSuffix(last, "norm") || strings.HasSuffix(last, "layernorm")
}
