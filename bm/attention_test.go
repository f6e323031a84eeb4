package bm

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// mtAttentionRef is causal multi-head attention with rotate-half RoPE in float64: u [B][T][d]
// flat, weights [d][d] flat ([in, out]). Returns [B·T·d].
func mtAttentionRef(cfg Config, numB, numT int, u, wq, wk, wv, wo []float64) []float64 {
	d, h := cfg.Dim, cfg.Heads
	hd, half := d/h, d/h/2
	proj := func(w []float64) []float64 {
		out := make([]float64, numB*numT*d)
		for r := range numB * numT {
			for j := range d {
				for i := range d {
					out[r*d+j] += u[r*d+i] * w[i*d+j]
				}
			}
		}
		return out
	}
	rope := func(x []float64) {
		for b := range numB {
			for t := range numT {
				for hh := range h {
					base := (b*numT+t)*d + hh*hd
					for i := range half {
						theta := float64(t) * math.Pow(cfg.RopeBase, -2*float64(i)/float64(hd))
						c, s := math.Cos(theta), math.Sin(theta)
						x1, x2 := x[base+i], x[base+half+i]
						x[base+i], x[base+half+i] = x1*c-x2*s, x2*c+x1*s
					}
				}
			}
		}
	}
	q, k, v := proj(wq), proj(wk), proj(wv)
	rope(q)
	rope(k)
	o := make([]float64, numB*numT*d)
	for b := range numB {
		for hh := range h {
			for tq := range numT {
				scores := make([]float64, tq+1)
				mx := math.Inf(-1)
				for tk := 0; tk <= tq; tk++ {
					for e := range hd {
						scores[tk] += q[(b*numT+tq)*d+hh*hd+e] * k[(b*numT+tk)*d+hh*hd+e]
					}
					scores[tk] /= math.Sqrt(float64(hd))
					mx = max(mx, scores[tk])
				}
				z := 0.0
				for tk := range scores {
					scores[tk] = math.Exp(scores[tk] - mx)
					z += scores[tk]
				}
				for tk := range scores {
					for e := range hd {
						o[(b*numT+tq)*d+hh*hd+e] += scores[tk] / z * v[(b*numT+tk)*d+hh*hd+e]
					}
				}
			}
		}
	}
	out := make([]float64, numB*numT*d)
	for r := range numB * numT {
		for j := range d {
			for i := range d {
				out[r*d+j] += o[r*d+i] * wo[i*d+j]
			}
		}
	}
	return out
}

// TestAttention checks causal attention with RoPE against the float64 reference (float32 and
// bfloat16 compute), and its gradients against finite differences.
func TestAttention(t *testing.T) {
	for _, dtype := range []string{"float32", "bfloat16"} {
		t.Run(dtype, func(t *testing.T) {
			cfg := mtConfig()
			cfg.ComputeDType = dtype
			const numB, numT = 2, 7
			rng := rand.New(rand.NewSource(12))
			u, uv := mtRandom(rng, 1, numB, numT, cfg.Dim)
			ctx := mtCtx(13)
			fn := func(ctx *context.Context, u *Node) *Node { return Attention(ctx.In("attn"), cfg, u) }
			got := mtValues(t, context.MustNewExec(mtBackend(t), ctx, fn).MustExec(u)[0])
			w := func(name string) []float64 { return mtVar(t, ctx, "/attn", name) }
			want := mtAttentionRef(cfg, numB, numT, uv, w("wq"), w("wk"), w("wv"), w("wo"))
			if dtype == "float32" {
				mtAssertClose(t, "attention vs reference", got, want, 0, 1e-5)
				mtGradCheck(t, ctx.Reuse(), u, "/attn", []string{"wq", "wk", "wv", "wo"},
					func(ctx *context.Context, u *Node) (*Node, *Node) { return mtWeightedSum(fn(ctx, u), 2), nil },
					1e-3, 1e-2, 5)
			} else {
				mtAssertClose(t, "bf16 attention vs reference", got, want, 0, 5e-2)
			}
		})
	}
}

// mtDecodeAttention runs AttentionPrefill on the first prompt tokens of u [B, T, d] and then
// AttentionStep for every later position, with caches of cacheLen, and returns the outputs of
// all T positions [B·T·d] (in position order per batch row) and the final caches.
func mtDecodeAttention(t testing.TB, ctx *context.Context, cfg Config, u []float64, numB, numT, prompt, cacheLen int) (out []float64, k, v *tensors.Tensor) {
	t.Helper()
	d := cfg.Dim
	backend := mtBackend(t)
	slice := func(from, to int) *tensors.Tensor {
		var vals []float64
		for b := range numB {
			vals = append(vals, u[(b*numT+from)*d:(b*numT+to)*d]...)
		}
		return mtF32Tensor(vals, numB, to-from, d)
	}
	prefill := context.MustNewExec(backend, ctx, func(ctx *context.Context, u *Node) (*Node, *Node, *Node) {
		return AttentionPrefill(ctx.In("attn"), cfg, u, cacheLen)
	})
	outs := prefill.MustExec(slice(0, prompt))
	perPos := make([][]float64, numT) // [pos] → [B·d]
	first := mtValues(t, outs[0])
	for p := range prompt {
		for b := range numB {
			perPos[p] = append(perPos[p], first[(b*prompt+p)*d:(b*prompt+p+1)*d]...)
		}
	}
	k, v = outs[1], outs[2]
	step := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, u, pos, k, v *Node) (*Node, *Node, *Node) {
		return AttentionStep(ctx.In("attn"), cfg, u, pos, k, v)
	})
	for p := prompt; p < numT; p++ {
		x := tensors.FromFlatDataAndDimensions(mtValuesF32(slice(p, p+1)), numB, d)
		outs := step.MustExec(x, tensors.FromScalar(int32(p)), k, v)
		perPos[p] = mtValues(t, outs[0])
		k, v = outs[1], outs[2]
	}
	out = make([]float64, numB*numT*d)
	for p := range numT {
		for b := range numB {
			copy(out[(b*numT+p)*d:(b*numT+p+1)*d], perPos[p][b*d:(b+1)*d])
		}
	}
	return out, k, v
}

func mtValuesF32(x *tensors.Tensor) []float32 { return tensors.MustCopyFlatData[float32](x) }

// TestAttentionDecodeMatchesFull checks that prefilling a prompt and then stepping one token at
// a time gives, at every position, the output of Attention over the whole sequence, and leaves
// the same KV cache as a prefill of the whole sequence; for prompts of 1, 2, 3 and 6 tokens,
// caches longer than and equal to the sequence, and both cache-write methods available on the
// backend.
func TestAttentionDecodeMatchesFull(t *testing.T) {
	const numB, numT = 2, 9
	for _, tc := range []struct {
		prompt, cacheLen int
		dtype, write     string
	}{
		{1, 12, "float32", ""},
		{2, 12, "float32", ""},
		{3, 12, "float32", "masked"},
		{6, 9, "float32", ""},
		{1, 12, "bfloat16", ""},
	} {
		t.Run(fmt.Sprintf("prompt%d/cache%d/%s/%s", tc.prompt, tc.cacheLen, tc.dtype, tc.write), func(t *testing.T) {
			cfg := mtConfig()
			cfg.ComputeDType = tc.dtype
			rng := rand.New(rand.NewSource(int64(tc.prompt)))
			u, uv := mtRandom(rng, 1, numB, numT, cfg.Dim)
			ctx := mtCtx(14)
			ctx.SetParam(ParamCacheWrite, tc.write)
			full := context.MustNewExec(mtBackend(t), ctx, func(ctx *context.Context, u *Node) (*Node, *Node, *Node) {
				return AttentionPrefill(ctx.In("attn"), cfg, u, tc.cacheLen)
			}).MustExec(u)
			got, k, v := mtDecodeAttention(t, ctx.Reuse(), cfg, uv, numB, numT, tc.prompt, tc.cacheLen)
			tol := 1e-5
			if tc.dtype == "bfloat16" {
				tol = 2e-2
			}
			mtAssertClose(t, "decode vs full attention", got, mtValues(t, full[0]), 0, tol)
			if tc.dtype == "float32" {
				mtAssertClose(t, "k cache", mtValues(t, k), mtValues(t, full[1]), 0, 1e-5)
				mtAssertClose(t, "v cache", mtValues(t, v), mtValues(t, full[2]), 0, 1e-5)
			}
		})
	}
}

// TestWriteCacheAt checks the masked cache write against a direct copy, and against
// DynamicUpdateSlice when the backend has it.
func TestWriteCacheAt(t *testing.T) {
	const numB, h, l, hd, pos = 2, 3, 5, 4, 3
	rng := rand.New(rand.NewSource(1))
	cache, cv := mtRandom(rng, 1, numB, h, l, hd)
	upd, uv := mtRandom(rng, 1, numB, h, 1, hd)
	backend := mtBackend(t)
	hasDynamic := backend.Capabilities().Operations[backends.OpTypeDynamicUpdateSlice]
	outs := MustExecOnceN(backend, func(c, u, p *Node) []*Node {
		res := []*Node{writeCacheAt(c, u, p, false)}
		if hasDynamic {
			res = append(res, writeCacheAt(c, u, p, true))
		}
		return res
	}, cache, upd, tensors.FromScalar(int32(pos)))
	want := append([]float64(nil), cv...)
	for b := range numB {
		for hh := range h {
			copy(want[((b*h+hh)*l+pos)*hd:((b*h+hh)*l+pos+1)*hd], uv[(b*h+hh)*hd:(b*h+hh+1)*hd])
		}
	}
	mtAssertClose(t, "masked write", mtValues(t, outs[0]), want, 0, 0)
	if hasDynamic {
		mtAssertClose(t, "dynamic write", mtValues(t, outs[1]), want, 0, 0)
	} else {
		t.Logf("backend %s has no DynamicUpdateSlice: only the masked write was checked", backend.Name())
	}
}
