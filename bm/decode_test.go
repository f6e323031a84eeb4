package bm

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// archTestConfigs are small configurations of the four architectures (see DecodeCheckConfigs).
var archTestConfigs = DecodeCheckConfigs()

// randomTokens returns [B][T] ids in [0, vocab) from rng.
func randomTokens(rng *rand.Rand, B, T, vocab int) [][]int {
	out := make([][]int, B)
	for b := range out {
		for t := 0; t < T; t++ {
			out[b] = append(out[b], rng.IntN(vocab))
		}
	}
	return out
}

// tokensTensor converts [B][T] ids to an int32 tensor.
func tokensTensor(ids [][]int) *tensors.Tensor {
	var flat []int32
	for _, row := range ids {
		for _, id := range row {
			flat = append(flat, int32(id))
		}
	}
	return tensors.FromFlatDataAndDimensions(flat, len(ids), len(ids[0]))
}

// TestDecoderMatchesForward checks, for every architecture, that prefill + recurrent steps
// reproduce the parallel forward's logits at every position, for prompts of 1, 2, 3, 5 and 8
// tokens (5 runs the bucketed prefill of 4 tokens and one step; the KV cache grows past 8), to
// 1e-4 of the largest logit magnitude: CheckDecode, the same check `blackmamba selfcheck` runs
// on a GPU. Each architecture is a subtest (-test.run 'TestDecoderMatchesForward/^mamba$'), and
// each check's line is logged as soon as it is done, so that a run stopped by its time limit
// still shows the checks it finished.
func TestDecoderMatchesForward(t *testing.T) {
	backend := cpuBackend(t)
	for _, cfg := range DecodeCheckConfigs() {
		t.Run(cfg.Name, func(t *testing.T) {
			if err := CheckDecodeConfig(backend, cfg, func(line string) { t.Log(line) }); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPrefillBucket checks the prompt-length and KV-cache buckets.
func TestPrefillBucket(t *testing.T) {
	for _, c := range []struct{ n, maxLen, want int }{
		{1, 2048, 8}, {8, 2048, 8}, {9, 2048, 16}, {100, 2048, 128}, {1025, 2048, 2048}, {9, 10, 10}, {3, 4, 4},
	} {
		if got := KVCacheBucket(c.n, c.maxLen); got != c.want {
			t.Errorf("KVCacheBucket(%d, %d) = %d, want %d", c.n, c.maxLen, got, c.want)
		}
	}
	for _, c := range []struct{ n, want int }{
		{1, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 4}, {6, 6}, {7, 6}, {8, 8}, {11, 8}, {12, 12}, {23, 16}, {24, 24}, {100, 96}, {2048, 2048},
	} {
		if got := PrefillBucket(c.n); got != c.want {
			t.Errorf("PrefillBucket(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

// TestGenerate checks that greedy generation equals the argmax of the parallel forward run on
// the growing sequence, that onToken can stop it, and that seeded sampling is reproducible.
func TestGenerate(t *testing.T) {
	backend := cpuBackend(t)
	cfg := archTestConfigs[0]
	m, _ := New(cfg)
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(2))
	dec, err := NewDecoder(backend, ctx, cfg, 1, 32)
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int{3, 14, 15}
	var streamed []int
	got, err := dec.Generate(prompt, 6, Greedy(), func(tok int) bool { streamed = append(streamed, tok); return true })
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(streamed) || len(got) != 6 {
		t.Fatalf("Generate returned %v, streamed %v; want 6 equal tokens", got, streamed)
	}
	fwd := context.MustNewExec(backend, ctx.Reuse(), func(ctx *context.Context, tok *Node) *Node {
		return m.Forward(ctx, tok, ForwardOptions{}).Logits
	})
	seq := append([]int(nil), prompt...)
	for i := 0; i < 6; i++ {
		logits := flat64(fwd.MustExec(tokensTensor([][]int{seq}))[0])
		last := logits[(len(seq)-1)*cfg.Vocab : len(seq)*cfg.Vocab]
		best := 0
		for j := 1; j < cfg.VocabReal; j++ {
			if last[j] > last[best] {
				best = j
			}
		}
		if best != got[i] {
			t.Fatalf("token %d: greedy decode gave %d, forward argmax %d (generated %v)", i, got[i], best, got)
		}
		seq = append(seq, best)
	}
	n := 0
	stopped, err := dec.Generate(prompt, 6, Greedy(), func(int) bool { n++; return n < 2 })
	if err != nil || len(stopped) != 2 {
		t.Fatalf("Generate with onToken stop after 2: got %v, %v", stopped, err)
	}
	s1, _ := dec.Generate(prompt, 8, NewSampler(SamplerOptions{Temperature: 1.5, TopK: 20, Seed: 9}), nil)
	s2, _ := dec.Generate(prompt, 8, NewSampler(SamplerOptions{Temperature: 1.5, TopK: 20, Seed: 9}), nil)
	if fmt.Sprint(s1) != fmt.Sprint(s2) {
		t.Errorf("same seed gave different samples: %v vs %v", s1, s2)
	}
	for _, id := range s1 {
		if id >= cfg.VocabReal {
			t.Errorf("sampled padding id %d (VocabReal %d)", id, cfg.VocabReal)
		}
	}
}

// BenchmarkDecodeStep times one recurrent step (batch 1) of each tiny architecture after a
// one-token prompt; the sequences restart every 64 tokens so attention caches stay short.
func BenchmarkDecodeStep(b *testing.B) {
	backend := cpuBackend(b)
	for _, cfg := range archTestConfigs {
		b.Run(cfg.Name, func(b *testing.B) {
			ctx := context.New()
			dec, err := NewDecoder(backend, ctx, cfg, 1, 64)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := dec.Prefill([][]int{{1}}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if dec.Pos() == 64 {
					b.StopTimer()
					if _, err := dec.Prefill([][]int{{1}}); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				logits, err := dec.Step([]int{(i * 7) % cfg.VocabReal})
				if err != nil {
					b.Fatal(err)
				}
				logits.FinalizeAll()
			}
		})
	}
}

// TestRingStatePadding checks the "ring" step where its state has padding columns
// (Config.StepFuse "wide": mambaRingWidth rounds K + N up to a power of two, and the step
// reads FoldStepWeights' x_proj and A copies with the zeros in place): with 5 states and a
// kernel of 4 the state is [B, D, 16], 7 columns of zeros; prefill + steps must still give the
// forward's logits, at batch 1 (the row products, with the residual deferred to the MoE blocks)
// and at batch 2, as must the unpadded ring ([B, D, 9]).
func TestRingStatePadding(t *testing.T) {
	backend := cpuBackend(t)
	cfg := DecodeCheckConfigs()[0]
	cfg.StateSize = 5
	for _, c := range []struct {
		fuse         string
		batch, width int
	}{{"residual,ring,wide", 1, 16}, {"ring,wide", 2, 16}, {"residual,router,ring,wide", 1, 16}, {"residual,ring", 1, 9},
		{"residual,router,ring,align,dtrow,head", 1, 9}, {"residual,router,ring,head,align,dtrow,nodefer,wide", 1, 16}} {
		cfg.StepFuse = c.fuse
		if w := mambaRingWidth(cfg); w != c.width {
			t.Fatalf("%s: mambaRingWidth with K=%d, N=%d: %d, want %d", c.fuse, cfg.ConvKernel, cfg.StateSize, w, c.width)
		}
		worst, err := checkDecodeArch(backend, cfg, c.batch, 10, StepFolded)
		if err != nil {
			t.Fatalf("%s, batch %d: %v", c.fuse, c.batch, err)
		}
		if worst > 1e-4 {
			t.Errorf("%s, batch %d: decoder vs forward max relative error %.3g > 1e-4", c.fuse, c.batch, worst)
		}
	}
	for _, c := range []struct{ k, n, want int }{{4, 16, 32}, {4, 4, 8}, {4, 28, 32}, {4, 60, 64}, {2, 1, 4}} {
		if got := ringWidth(c.k, c.n); got != c.want {
			t.Errorf("ringWidth(K=%d, N=%d) = %d, want %d", c.k, c.n, got, c.want)
		}
	}
}

// TestCheckStepFuse checks the step_fuse lists: every fusion alone with what it needs, all of
// them together, an unknown name, and each fusion that needs another without it.
func TestCheckStepFuse(t *testing.T) {
	for _, f := range StepFusions {
		list := f
		if need, ok := StepFusionNeeds[f]; ok {
			list = need.Fusion + "," + f
		}
		if err := CheckStepFuse(list); err != nil {
			t.Errorf("CheckStepFuse(%q): %v", list, err)
		}
	}
	if err := CheckStepFuse(strings.Join(StepFusions, ",")); err != nil {
		t.Errorf("all fusions: %v", err)
	}
	if err := CheckStepFuse("residual,fast"); err == nil || !strings.Contains(err.Error(), `unknown fusion "fast"`) {
		t.Errorf(`CheckStepFuse("residual,fast") = %v, want an error naming "fast"`, err)
	}
	for _, f := range []string{"wide", "residual,nodefer"} {
		if err := CheckStepFuse(f); err == nil || !strings.Contains(err.Error(), "needs ring") {
			t.Errorf(`CheckStepFuse(%q) = %v, want an error saying it needs ring`, f, err)
		}
	}
}
