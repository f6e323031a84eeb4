package bm

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/xla"
)

// TestGenerateGreedyMatchesHostSampling checks, for the four small architectures, that the
// device-resident greedy path produces exactly the tokens of Generate with Greedy() (host-side
// argmax of the same logits), with and without a WarmUpGreedy beforehand, through KV-cache
// growth 8 → 16 → 24 and for prompts that go through the prefill only (1 token) and through
// prefill plus steps (5 tokens: prefill bucket 4, then one step); one step per call and
// unrolled (Unroll 4: an aligning first call of 3 steps after a 1-token prompt and 3 after 5 tokens, then 4 at a time, single steps at
// the end; Unroll 5 does not divide the KV-cache buckets).
func TestGenerateGreedyMatchesHostSampling(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen = 24
	for _, cfg := range DecodeCheckConfigs() {
		for _, unroll := range []int{1, 4, 5} {
			t.Run(fmt.Sprintf("%s/unroll%d", cfg.Name, unroll), func(t *testing.T) {
				g := newSeededGreedy(t, backend, cfg, 1, maxLen, 3)
				dec := g.Decoder
				g.Unroll = unroll
				for _, tc := range []struct {
					prompt []int
					n      int
					warm   bool
				}{
					{[]int{7}, maxLen, false},
					{[]int{3, 1, 4, 1, 5}, maxLen - 4, true},
				} {
					want, err := dec.Generate(tc.prompt, tc.n, Greedy(), nil)
					if err != nil {
						t.Fatal(err)
					}
					if tc.warm {
						if err := g.WarmUpGreedy(len(tc.prompt), tc.n); err != nil {
							t.Fatal(err)
						}
					}
					got, err := g.GenerateGreedy(tc.prompt, tc.n)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, want) {
						t.Errorf("prompt %v: device greedy tokens %v, host greedy %v", tc.prompt, got, want)
					}
					if len(got) != tc.n {
						t.Errorf("prompt %v: got %d tokens, want %d", tc.prompt, len(got), tc.n)
					}
				}
			})
		}
	}
}

// newSeededGreedy returns a greedy decoder of batch sequences of at most maxLen tokens over a
// model of cfg whose weights are initialised from seed.
func newSeededGreedy(t testing.TB, backend backends.Backend, cfg Config, batch, maxLen int, seed int64) *GreedyDecoder {
	t.Helper()
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, seed)
	dec, err := NewDecoder(backend, ctx, cfg, batch, maxLen)
	if err != nil {
		t.Fatal(err)
	}
	return NewGreedyDecoder(dec)
}

// TestWarmUpGreedyCompilesEverything checks that WarmUpGreedy builds every graph the
// generation it announces will run: after it, GenerateGreedy builds none (GraphsBuilt stays
// the same), for the four small architectures, one step per call and unrolled (4 divides the
// KV-cache buckets 8, 16, 32; 5 does not), prompts of 1 and 5 tokens, and generations that end
// in the last bucket (maxLen 40, not a power of two) or in a middle one. On a compiling backend
// (a GPU), where each of those graphs takes about a second to compile, it runs the unrolled
// case of 4 steps per call and the whole-length generations only.
func TestWarmUpGreedyCompilesEverything(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen = 40
	type gen struct{ promptLen, n int }
	unrolls, gens := []int{1, 4, 5}, []gen{{1, maxLen}, {5, maxLen - 4}, {1, 20}, {5, 11}}
	if !xla.IsPureGo(backend) {
		unrolls, gens = []int{4}, gens[:2]
	}
	for _, cfg := range DecodeCheckConfigs() {
		for _, unroll := range unrolls {
			t.Run(fmt.Sprintf("%s/unroll%d", cfg.Name, unroll), func(t *testing.T) {
				for _, tc := range gens {
					dec, err := NewDecoder(backend, context.New(), cfg, 1, maxLen)
					if err != nil {
						t.Fatal(err)
					}
					g := NewGreedyDecoder(dec)
					g.Unroll = unroll
					if err := g.WarmUpGreedy(tc.promptLen, tc.n); err != nil {
						t.Fatal(err)
					}
					warm := g.GraphsBuilt()
					if warm == 0 {
						t.Fatalf("prompt %d, %d tokens: the warm-up built no graph", tc.promptLen, tc.n)
					}
					prompt := make([]int, tc.promptLen)
					for i := range prompt {
						prompt[i] = 2 + i
					}
					got, err := g.GenerateGreedy(prompt, tc.n)
					if err != nil {
						t.Fatal(err)
					}
					if len(got) != tc.n {
						t.Errorf("prompt %d: got %d tokens, want %d", tc.promptLen, len(got), tc.n)
					}
					if after := g.GraphsBuilt(); after != warm {
						t.Errorf("prompt %d, %d tokens: the generation built %d graphs after the warm-up's %d",
							tc.promptLen, tc.n, after-warm, warm)
					}
					g.Release()
				}
			})
		}
	}
}

// TestGreedyDecoderErrors checks the messages for misuse of the greedy path.
func TestGreedyDecoderErrors(t *testing.T) {
	backend := cpuBackend(t)
	cfg := DecodeCheckConfigs()[2] // transformer: has a maxLen limit
	dec, err := NewDecoder(backend, context.New(), cfg, 1, 8)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGreedyDecoder(dec)
	if _, err := g.StepGreedy(tensors.FromValue([]int32{1})); err == nil {
		t.Error("StepGreedy before PrefillGreedy: no error")
	}
	tok, err := g.PrefillGreedy([][]int{{1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.StepGreedy(tensors.FromValue([]int64{1})); err == nil {
		t.Error("StepGreedy with int64 tokens: no error")
	}
	if _, err := g.StepGreedy(tensors.FromValue([]int32{1, 2})); err == nil {
		t.Error("StepGreedy with 2 tokens for batch 1: no error")
	}
	if _, err := g.StepGreedy(tok); err != nil {
		t.Errorf("StepGreedy with the prefill's token: %v", err)
	}
	if _, err := g.GenerateGreedy([]int{1, 2}, 8); err == nil {
		t.Error("GenerateGreedy past maxLen: no error")
	}
	if err := g.WarmUpGreedy(1, 9); err == nil {
		t.Error("WarmUpGreedy past maxLen: no error")
	}
	if _, err := g.StepsGreedy(tok, 0); err == nil {
		t.Error("StepsGreedy of 0 steps: no error")
	}
	// Position 2 after one step: 7 more steps would use positions 2..8, past maxLen 8.
	if _, err := g.StepsGreedy(tok, 7); err == nil || !strings.Contains(err.Error(), "past maxLen 8") {
		t.Errorf("StepsGreedy past maxLen: error %v, want one naming maxLen 8", err)
	}
	outs, err := g.StepsGreedy(tok, 6)
	if err != nil || len(outs) != 6 {
		t.Errorf("StepsGreedy of 6 steps up to maxLen: %d tokens, error %v", len(outs), err)
	}
}

// TestOneTokenPromptCompilesNoPrefill checks that a one-token prompt starts from empty states
// through the step graph: after a warm-up and a generation from one token, the decoder has
// compiled no prefill and no argmax graph, for the four architectures (the tokens themselves
// are checked against host sampling by TestGenerateGreedyMatchesHostSampling, the logits
// against the parallel forward by TestDecoderMatchesForward).
func TestOneTokenPromptCompilesNoPrefill(t *testing.T) {
	backend := cpuBackend(t)
	for _, cfg := range DecodeCheckConfigs() {
		ctx := context.New()
		dec, err := NewDecoder(backend, ctx, cfg, 1, 16)
		if err != nil {
			t.Fatal(err)
		}
		g := NewGreedyDecoder(dec)
		if err := g.WarmUpGreedy(1, 12); err != nil {
			t.Fatal(err)
		}
		if _, err := g.GenerateGreedy([]int{9}, 12); err != nil {
			t.Fatal(err)
		}
		if len(g.prefill) != 0 || g.argmax != nil {
			t.Errorf("%s: %d prefill graphs, argmax compiled %v; want none", cfg.Name, len(g.prefill), g.argmax != nil)
		}
		g.Release()
	}
}

// TestGenerateStream checks the streaming device-greedy generation against Generate with
// Greedy() (host argmax of the same logits), for the four architectures, one step per call and
// 4 per call: the same tokens, each handed to the callback in order, a stop requested by the
// callback honoured (also in the middle of an unrolled call), and maxNew 0.
func TestGenerateStream(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen = 20
	type tcase struct {
		cfg    Config
		unroll int
	}
	var cases []tcase
	for i, cfg := range DecodeCheckConfigs() {
		cases = append(cases, tcase{cfg, 1})
		if i%2 == 0 { // BlackMamba and the Transformer: also 4 steps per call
			cases = append(cases, tcase{cfg, 4})
		}
	}
	for _, c := range cases {
		cfg := c.cfg
		g := newSeededGreedy(t, backend, cfg, 1, maxLen, 6)
		dec := g.Decoder
		g.Unroll = c.unroll
		for _, prompt := range [][]int{{4}, {2, 7, 1}} {
			n := maxLen - len(prompt) + 1
			want, err := dec.Generate(prompt, n, Greedy(), nil)
			if err != nil {
				t.Fatal(err)
			}
			var seen []int
			got, err := g.GenerateStream(prompt, n, func(id int) bool { seen = append(seen, id); return true })
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) || !slices.Equal(seen, want) {
				t.Errorf("%s prompt %v: streamed %v (callback %v), host greedy %v", cfg.Name, prompt, got, seen, want)
			}
			stopped, err := g.GenerateStream(prompt, n, func(int) bool { return false })
			if err != nil || len(stopped) != 1 || stopped[0] != want[0] {
				t.Errorf("%s: stop after the first token: %v, %v", cfg.Name, stopped, err)
			}
			count := 0
			stopped, err = g.GenerateStream(prompt, n, func(int) bool { count++; return count < 3 })
			if err != nil || !slices.Equal(stopped, want[:3]) {
				t.Errorf("%s unroll %d: stop after the third token: %v, %v (want %v)", cfg.Name, c.unroll, stopped, err, want[:3])
			}
		}
		if out, err := g.GenerateStream([]int{1}, 0, nil); err != nil || len(out) != 0 {
			t.Errorf("%s: maxNew 0: %v, %v", cfg.Name, out, err)
		}
		if _, err := g.GenerateStream([]int{1, 2}, maxLen, nil); cfg.Name == "transformer" && (err == nil || !strings.Contains(err.Error(), "exceeds maxLen")) {
			t.Errorf("%s: past maxLen: error %v", cfg.Name, err)
		}
		g.Release()
	}
}
