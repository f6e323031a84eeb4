package bm

import (
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// MLP is the dense gated MLP block (pattern entry "1"): y = fc2(act(gate) ⊙ up) with
// [gate ; up] = u·fc1. Variables in the scope of ctx: fc1 [d, 2F] (first F columns gate, next F
// up) and fc2 [F, d], no biases; fc2 starts at std cfg.InitStd·OutProjScale(cfg).
//
// u: [..., d] (any leading axes) → [..., d] float32. Matmuls run in ComputeDType(cfg); the
// activation in float32.
//
// FLOPs per token (forward): 2·d·2F (fc1) + 2·F·d (fc2) = 6·d·F for the matmuls, plus about
// 5·F for the activation and product (MLPFLOPsPerToken).
func MLP(ctx *context.Context, cfg Config, u *Node) *Node {
	g := u.Graph()
	d, f := cfg.Dim, cfg.FFN
	fc1 := weightVar(ctx, g, cfg, "fc1", false, d, 2*f)
	fc2 := weightVar(ctx, g, cfg, "fc2", true, f, d)
	x, lead := flattenTokens(u)
	h := ComputeEinsum(cfg, "nd,df->nf", x, fc1)
	y := ComputeEinsum(cfg, "nf,fd->nd", gatedActivation(cfg, h), fc2)
	return Reshape(y, append(lead, d)...)
}

// mlpStep is MLP for a decoding step, the block's input → [B, d] float32: fc1 by the input's
// project, fc2 by its product (the weights' transposed or gain-folded copies when they exist).
func mlpStep(ctx *context.Context, cfg Config, in stepInput) *Node {
	d, f := cfg.Dim, cfg.FFN
	h := in.project(ctx, cfg, "fc1", d, 2*f)
	return in.product(ctx, cfg, "fc2", true, gatedActivation(cfg, h), f, d)
}

// flattenTokens reshapes x [..., d] to [N, d] and returns the leading dimensions, so that the
// result of a token-wise computation can be reshaped back with Reshape(y, append(lead, d)...).
func flattenTokens(x *Node) (*Node, []int) {
	dims := x.Shape().Dimensions
	lead := append([]int(nil), dims[:len(dims)-1]...)
	n := 1
	for _, v := range lead {
		n *= v
	}
	return Reshape(x, n, dims[len(dims)-1]), lead
}

// gatedActivation splits h [..., 2F] into gate (first F) and up (last F) and returns
// act(gate) ⊙ up [..., F] in float32.
func gatedActivation(cfg Config, h *Node) *Node {
	f := h.Shape().Dim(-1) / 2
	gate := SliceAxis(h, -1, AxisRange(0, f))
	up := SliceAxis(h, -1, AxisRange(f, 2*f))
	return Mul(Activate(cfg, gate), up)
}

// MLPFLOPsPerToken returns the forward FLOPs per token of one dense MLP block as run by MLP:
// 6·d·F multiply-adds counted as 2 FLOPs each, plus 5·F for SiLU (exp, add, divide, multiply)
// and the gate product. The norm in front of the block is not included.
func MLPFLOPsPerToken(cfg Config) float64 {
	d, f := float64(cfg.Dim), float64(cfg.FFN)
	return 6*d*f + 5*f
}
