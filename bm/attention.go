package bm

import (
	"fmt"
	"math"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Causal multi-head self-attention with rotary positions, the mixer of the Transformer
// baselines (pattern entry "a"). Variables in the scope of ctx: wq, wk, wv, wo [d, d], no
// biases; wo starts at std cfg.InitStd·OutProjScale(cfg). H = cfg.Heads heads of width
// hd = d/H.
//
//	q, k, v = u·wq, u·wk, u·wv, split into heads            [B, H, T, hd]
//	q, k    = RoPE(q), RoPE(k) at their positions
//	o       = softmax(q·kᵀ/√hd + causal mask)·v              (softmax in float32)
//	out     = concat_heads(o)·wo                             [B, T, d]
//
// RoPE uses the rotate-half convention (as GPT-NeoX and Llama): with x = [x1 ; x2] split in
// halves and θ_i = p·base^(−2i/hd), RoPE(x) = [x1·cos θ − x2·sin θ ; x2·cos θ + x1·sin θ].
//
// Decoding keeps a KV cache of preallocated length L per layer: k and v [B, H, L, hd] in the
// compute dtype, keys stored after RoPE. AttentionPrefill fills positions 0..T−1;
// AttentionStep writes position pos and attends to positions ≤ pos. The prefix is never
// recomputed; a step costs O(L·d) for the attention over the cache (masked beyond pos) plus
// the four projections, so a decoder that wants the cost to follow pos grows the cache in
// buckets (ExtendKVCache).

// ParamCacheWrite is the context hyperparameter choosing how AttentionStep writes the new key
// and value into the cache: "" or "auto" uses DynamicUpdateSlice when the backend supports it
// (XLA: an in-place update when the cache buffer is donated) and a masked select otherwise
// (the pure-Go backend has no DynamicUpdateSlice); "masked" always uses the masked select,
// Where(position == pos, new, cache), which reads and writes the whole cache. Both give
// identical values: they copy the same numbers.
const ParamCacheWrite = "cache_write"

// Attention runs causal self-attention on u [B, T, d] and returns [B, T, d] float32.
func Attention(ctx *context.Context, cfg Config, u *Node) *Node {
	out, _, _ := attentionFull(ctx, cfg, u)
	return out
}

// AttentionPrefill is Attention that also returns the KV cache for decoding: k and v
// [B, H, cacheLen, hd] in the compute dtype, positions 0..T−1 filled (keys after RoPE), the rest
// zero. cacheLen must be ≥ T.
func AttentionPrefill(ctx *context.Context, cfg Config, u *Node, cacheLen int) (out, k, v *Node) {
	numT := u.Shape().Dim(1)
	if cacheLen < numT {
		panic(fmt.Sprintf("bm.AttentionPrefill: cacheLen %d is shorter than the prompt (%d tokens)", cacheLen, numT))
	}
	out, k, v = attentionFull(ctx, cfg, u)
	dt := ComputeDType(cfg)
	return out, ExtendKVCache(ConvertDType(k, dt), cacheLen), ExtendKVCache(ConvertDType(v, dt), cacheLen)
}

// ExtendKVCache pads a cache [B, H, L, hd] with zeros to [B, H, newLen, hd] (newLen ≥ L), so a
// decoder can grow its caches in buckets.
func ExtendKVCache(cache *Node, newLen int) *Node {
	dims := cache.Shape().Dimensions
	if cache.Rank() != 4 || newLen < dims[2] {
		panic(fmt.Sprintf("bm.ExtendKVCache: want a [B, H, L, hd] cache and newLen >= L, got %s and %d", cache.Shape(), newLen))
	}
	if newLen == dims[2] {
		return cache
	}
	zeros := Zeros(cache.Graph(), shapes.Make(cache.DType(), dims[0], dims[1], newLen-dims[2], dims[3]))
	return Concatenate([]*Node{cache, zeros}, 2)
}

// AttentionStep runs one decoding step: u [B, d] is the token at position pos (scalar int32,
// 0 ≤ pos < L), k and v [B, H, L, hd] the caches. It writes the token's key and value at pos
// (see ParamCacheWrite), attends to positions 0..pos and returns out [B, d] float32 and the
// updated caches.
func AttentionStep(ctx *context.Context, cfg Config, u, pos, k, v *Node) (out, k2, v2 *Node) {
	if u.Rank() != 2 {
		panic(fmt.Sprintf("bm.AttentionStep: u must be [B, d], got %s", u.Shape()))
	}
	return attentionStep(ctx, cfg, normedStepInput(u), pos, k, v)
}

// attentionStep is AttentionStep with the block's input as a stepInput (the normed token, or
// the raw residual for the gain-folded copies of wq, wk and wv).
func attentionStep(ctx *context.Context, cfg Config, in stepInput, pos, k, v *Node) (out, k2, v2 *Node) {
	g := in.graph()
	numB, d := in.batch(), cfg.Dim
	h, hd := cfg.Heads, cfg.HeadDim()
	cacheLen := k.Shape().Dim(2)
	if !k.Shape().Equal(v.Shape()) || k.Rank() != 4 || k.Shape().Dim(0) != numB || k.Shape().Dim(1) != h || k.Shape().Dim(3) != hd {
		panic(fmt.Sprintf("bm.AttentionStep: caches must be [B=%d, H=%d, L, hd=%d], got k %s, v %s", numB, h, hd, k.Shape(), v.Shape()))
	}
	pos = ConvertDType(pos, dtypes.Int32)
	positions := Reshape(ConvertDType(pos, dtypes.Float32), 1)
	// The products by stepMatmulVar, in the order attentionVariables creates the weights.
	row := func(name string) *Node { return Reshape(in.project(ctx, cfg, name, d, d), numB, 1, d) }
	qr := row("wq")
	kr := row("wk")
	vr := row("wv")
	q, kn, vn := attentionHeads(cfg, qr, kr, vr, positions) // [B, H, 1, hd]

	method := context.GetParamOr(ctx, ParamCacheWrite, "")
	dynamic := false
	switch method {
	case "", "auto":
		dynamic = g.Backend().Capabilities().Operations[backends.OpTypeDynamicUpdateSlice]
	case "masked":
	default:
		panic(fmt.Sprintf("bm.AttentionStep: context parameter %q is %q; want auto or masked", ParamCacheWrite, method))
	}
	k2 = writeCacheAt(k, ConvertDType(kn, k.DType()), pos, dynamic)
	v2 = writeCacheAt(v, ConvertDType(vn, v.DType()), pos, dynamic)

	keyPos := Iota(g, shapes.Make(dtypes.Int32, cacheLen), 0)
	visible := LessOrEqual(keyPos, pos)                            // [L]
	o := attendCore(cfg, q, k2, v2, Reshape(visible, 1, cacheLen)) // [B, H, 1, hd]
	o = Reshape(Transpose(o, 1, 2), numB, d)
	return in.product(ctx, cfg, "wo", true, o, d, d), k2, v2
}

// writeCacheAt writes update [B, H, 1, hd] into cache [B, H, L, hd] at position pos (int32
// scalar), with DynamicUpdateSlice or with a masked select.
func writeCacheAt(cache, update, pos *Node, dynamic bool) *Node {
	g := cache.Graph()
	if dynamic {
		zero := ScalarZero(g, dtypes.Int32)
		return DynamicUpdateSlice(cache, update, []*Node{zero, zero, pos, zero})
	}
	dims := cache.Shape().Dimensions
	at := Equal(Iota(g, shapes.Make(dtypes.Int32, dims[2]), 0), pos) // [L]
	at = BroadcastToDims(Reshape(at, 1, 1, dims[2], 1), dims...)
	return Where(at, BroadcastToDims(update, dims...), cache)
}

type attentionWeights struct{ wq, wk, wv, wo *Node }

func attentionVariables(ctx *context.Context, g *Graph, cfg Config) attentionWeights {
	d := cfg.Dim
	return attentionWeights{
		wq: weightVar(ctx, g, cfg, "wq", false, d, d),
		wk: weightVar(ctx, g, cfg, "wk", false, d, d),
		wv: weightVar(ctx, g, cfg, "wv", false, d, d),
		wo: weightVar(ctx, g, cfg, "wo", true, d, d),
	}
}

// attentionFull is the whole-sequence path: it returns out [B, T, d] and the post-RoPE keys and
// the values [B, H, T, hd] (float32).
func attentionFull(ctx *context.Context, cfg Config, u *Node) (out, k, v *Node) {
	g := u.Graph()
	if u.Rank() != 3 || u.Shape().Dim(2) != cfg.Dim {
		panic(fmt.Sprintf("bm.Attention: u must be [B, T, d=%d], got %s", cfg.Dim, u.Shape()))
	}
	if cfg.Heads <= 0 || cfg.Dim%cfg.Heads != 0 || cfg.HeadDim()%2 != 0 {
		panic(fmt.Sprintf("bm.Attention: config %q: heads=%d must divide d_model=%d into an even head width", cfg.Name, cfg.Heads, cfg.Dim))
	}
	numB, numT, d := u.Shape().Dim(0), u.Shape().Dim(1), cfg.Dim
	w := attentionVariables(ctx, g, cfg)
	positions := Iota(g, shapes.Make(dtypes.Float32, numT), 0)
	q, k, v := attentionProject(cfg, w, u, positions)
	o := attendCore(cfg, q, k, v, LowerTriangular(g, numT)) // [B, H, T, hd]
	o = Reshape(Transpose(o, 1, 2), numB, numT, d)
	return ComputeEinsum(cfg, "btd,de->bte", o, w.wo), k, v
}

// attentionProject computes q, k (after RoPE) and v [B, H, T, hd] float32 for u [B, T, d] at the
// given positions [T] (float32).
func attentionProject(cfg Config, w attentionWeights, u, positions *Node) (q, k, v *Node) {
	return attentionHeads(cfg, ComputeEinsum(cfg, "btd,de->bte", u, w.wq), ComputeEinsum(cfg, "btd,de->bte", u, w.wk),
		ComputeEinsum(cfg, "btd,de->bte", u, w.wv), positions)
}

// attentionHeads splits the projections q, k, v [B, T, d] (float32) into heads [B, H, T, hd]
// and rotates q and k by their positions [T] (float32).
func attentionHeads(cfg Config, q, k, v, positions *Node) (qh, kh, vh *Node) {
	numB, numT := q.Shape().Dim(0), q.Shape().Dim(1)
	h, hd := cfg.Heads, cfg.HeadDim()
	heads := func(x *Node) *Node { return Transpose(Reshape(x, numB, numT, h, hd), 1, 2) }
	cos, sin := ropeAngles(cfg, positions)
	return applyRoPE(heads(q), cos, sin), applyRoPE(heads(k), cos, sin), heads(v)
}

// ropeAngles returns cos θ and sin θ [T, hd/2] for positions [T] (float32), with
// θ_{p,i} = p·base^(−2i/hd). Prefill and step compute them with the same float32 products, so
// a position gets bit-identical angles on both paths.
func ropeAngles(cfg Config, positions *Node) (cos, sin *Node) {
	hd := cfg.HeadDim()
	half := hd / 2
	base := cfg.RopeBase
	if base <= 0 {
		base = 10000
	}
	inv := make([]float32, half)
	for i := range inv {
		inv[i] = float32(math.Pow(base, -2*float64(i)/float64(hd)))
	}
	theta := Mul(InsertAxes(positions, -1), InsertAxes(Const(positions.Graph(), inv), 0)) // [T, half]
	return Cos(theta), Sin(theta)
}

// applyRoPE rotates x [B, H, T, hd] by the angles cos, sin [T, hd/2] (rotate-half convention).
func applyRoPE(x, cos, sin *Node) *Node {
	half := x.Shape().Dim(-1) / 2
	cos, sin = ExpandLeftToRank(cos, x.Rank()), ExpandLeftToRank(sin, x.Rank())
	x1 := SliceAxis(x, -1, AxisRange(0, half))
	x2 := SliceAxis(x, -1, AxisRange(half, 2*half))
	return Concatenate([]*Node{
		Sub(Mul(x1, cos), Mul(x2, sin)),
		Add(Mul(x2, cos), Mul(x1, sin)),
	}, -1)
}

// attendCore computes softmax(q·kᵀ/√hd, masked)·v for q [B, H, Tq, hd], k, v [B, H, Tk, hd]
// and a boolean mask [Tq, Tk] (true = visible). The scores and the softmax are float32; the
// two matmuls run in the compute dtype. Every query must see at least one key.
func attendCore(cfg Config, q, k, v, visible *Node) *Node {
	hd := q.Shape().Dim(-1)
	scores := MulScalar(ComputeEinsum(cfg, "bhqe,bhke->bhqk", q, k), 1/math.Sqrt(float64(hd)))
	mask := BroadcastToDims(Reshape(visible, 1, 1, visible.Shape().Dim(0), visible.Shape().Dim(1)), scores.Shape().Dimensions...)
	scores = Where(mask, scores, Infinity(q.Graph(), dtypes.Float32, -1))
	return ComputeEinsum(cfg, "bhqk,bhke->bhqe", Softmax(scores, -1), v)
}

// AttentionFLOPsPerToken returns the forward FLOPs per token of one attention block at context
// length ctxLen (the number of keys the token attends to): 8·d² for the four projections,
// 4·d·ctxLen for scores and weighted values, 5·H·ctxLen for scaling and softmax, and 6·d for
// RoPE on q and k. In a causal forward over T tokens the average ctxLen is (T+1)/2.
func AttentionFLOPsPerToken(cfg Config, ctxLen float64) float64 {
	d, h := float64(cfg.Dim), float64(cfg.Heads)
	return 8*d*d + 4*d*ctxLen + 5*h*ctxLen + 6*d
}
