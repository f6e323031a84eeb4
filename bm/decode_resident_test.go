package bm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// eachResidentCase runs f as a subtest for each of the decoder check's architectures at one
// and four steps per call, with a batch-1 greedy decoder of maxLen positions and weights of seed
// (released after f).
func eachResidentCase(t *testing.T, backend backends.Backend, maxLen int, seed int64, f func(t *testing.T, g *GreedyDecoder, unroll int)) {
	t.Helper()
	for _, cfg := range DecodeCheckConfigs() {
		for _, unroll := range []int{1, 4} {
			t.Run(fmt.Sprintf("%s/unroll%d", cfg.Name, unroll), func(t *testing.T) {
				g := newSeededGreedy(t, backend, cfg, 1, maxLen, seed)
				defer g.Release()
				g.Unroll = unroll
				f(t, g, unroll)
			})
		}
	}
}

// prefillOne starts g's sequence from prompt and returns the first token, on the device and on
// the host.
func prefillOne(t *testing.T, g *GreedyDecoder, prompt []int) (*tensors.Tensor, int) {
	t.Helper()
	tok, err := g.PrefillGreedy([][]int{prompt})
	if err != nil {
		t.Fatal(err)
	}
	first, err := tensors.CopyFlatData[int32](tok)
	if err != nil {
		tok.FinalizeAll()
		t.Fatal(err)
	}
	return tok, int(first[0])
}

// TestGenerateResidentMatchesGreedy checks, for the four small architectures, one step per call
// and unrolled (4: an aligning first call, then 4 at a time, single steps at the end), prompts of
// 1 and 5 tokens, that GenerateResident gives exactly the tokens of GenerateGreedy, that after
// WarmUpResident it builds no graph, and that the executables of every turn ran (the history
// and the position are carried from call to call on the device, through all of them). On the
// XLA backend (BLACKMAMBA_TEST_BACKEND) its outputs alias its inputs and one executable serves.
func TestGenerateResidentMatchesGreedy(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen = 24
	eachResidentCase(t, backend, maxLen, 5, func(t *testing.T, g *GreedyDecoder, unroll int) {
		for _, prompt := range [][]int{{7}, {3, 1, 4, 1, 5}} {
			n := maxLen - len(prompt) + 1 // tokens after the prompt, the prefill's included
			want, err := g.GenerateGreedy(prompt, n)
			if err != nil {
				t.Fatal(err)
			}
			if err := g.WarmUpResident(len(prompt), n); err != nil {
				t.Fatal(err)
			}
			built := g.GraphsBuilt()
			tok, first := prefillOne(t, g, prompt)
			rest, err := g.GenerateResident(tok, n-1)
			tok.FinalizeAll()
			if err != nil {
				t.Fatal(err)
			}
			got := []int{first}
			for _, v := range rest[0] {
				got = append(got, int(v))
			}
			if !slices.Equal(got, want) {
				t.Errorf("prompt %v: resident tokens %v, greedy %v", prompt, got, want)
			}
			if b := g.GraphsBuilt() - built; b != 0 {
				t.Errorf("prompt %v: %d graphs built after WarmUpResident", prompt, b)
			}
		}
		if n := g.residentTurns(); len(g.resident) == 0 || len(g.resident)%n != 0 {
			t.Errorf("%d resident executables, want a multiple of %d (the turns)", len(g.resident), n)
		}
	})
}

// TestGenerateResidentBatch: two sequences decoded together give each its own greedy tokens.
func TestGenerateResidentBatch(t *testing.T) {
	backend := cpuBackend(t)
	cfg := DecodeCheckConfigs()[0]
	const maxLen, n = 12, 8
	g := newSeededGreedy(t, backend, cfg, 2, maxLen, 6)
	defer g.Release()
	tok, err := g.PrefillGreedy([][]int{{2}, {9}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.GenerateResident(tok, n)
	tok.FinalizeAll()
	if err != nil {
		t.Fatal(err)
	}
	// The same through StepsGreedy, one token tensor per step.
	tok, err = g.PrefillGreedy([][]int{{2}, {9}})
	if err != nil {
		t.Fatal(err)
	}
	want := [][]int32{nil, nil}
	for range n {
		next, err := g.StepGreedy(tok)
		tok.FinalizeAll()
		if err != nil {
			t.Fatal(err)
		}
		v, err := tensors.CopyFlatData[int32](next)
		if err != nil {
			t.Fatal(err)
		}
		want[0], want[1] = append(want[0], v[0]), append(want[1], v[1])
		tok = next
	}
	tok.FinalizeAll()
	for b := range 2 {
		if !slices.Equal(got[b], want[b]) {
			t.Errorf("sequence %d: resident %v, step by step %v", b, got[b], want[b])
		}
	}
}

// TestGenerateResidentErrors: bad calls are errors that say what is wrong.
func TestGenerateResidentErrors(t *testing.T) {
	backend := cpuBackend(t)
	cfg := DecodeCheckConfigs()[0]
	ctx := context.New()
	dec, err := NewDecoder(backend, ctx, cfg, 1, 8)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGreedyDecoder(dec)
	defer g.Release()
	ids := tensors.FromFlatDataAndDimensions([]int32{1}, 1)
	if _, err := g.GenerateResident(ids, 2); err == nil || !strings.Contains(err.Error(), "PrefillGreedy first") {
		t.Errorf("before a prefill: %v", err)
	}
	tok, err := g.PrefillGreedy([][]int{{1}})
	if err != nil {
		t.Fatal(err)
	}
	defer tok.FinalizeAll()
	for _, tc := range []struct {
		tok  *tensors.Tensor
		n    int
		want string
	}{
		{tok, 0, "must be positive"},
		{tok, 8, "past maxLen 8"},
		{tensors.FromFlatDataAndDimensions([]float32{1}, 1), 2, "int32 [1]"},
	} {
		if _, err := g.GenerateResident(tc.tok, tc.n); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("GenerateResident(n=%d): %v, want an error containing %q", tc.n, err, tc.want)
		}
	}
	if err := g.WarmUpResident(1, 1); err == nil || !strings.Contains(err.Error(), "at least 2") {
		t.Errorf("WarmUpResident(1, 1): %v", err)
	}
}

// TestGenerateResidentStream checks, for the four small architectures, one step per call and
// unrolled (4, which does not divide the 12 steps after the prefill's token: single steps end
// it), that GenerateResidentStream hands over exactly GenerateStream's tokens, in order, that
// after WarmUpResident it builds no graph, that a stop asked by onToken ends it at that token
// (also within a call's tokens), and that one token is the prefill's alone; each with the
// history copied after every call and, with a StreamInterval of an hour, after the last only.
func TestGenerateResidentStream(t *testing.T) {
	backend := cpuBackend(t)
	const maxLen, maxNew = 16, 13
	prompt := []int{3, 1, 4}
	eachResidentCase(t, backend, maxLen, 8, func(t *testing.T, g *GreedyDecoder, unroll int) {
		want, err := g.GenerateStream(prompt, maxNew, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.WarmUpResident(len(prompt), maxNew); err != nil {
			t.Fatal(err)
		}
		built := g.GraphsBuilt()
		// A copy after every call, and (an hour) one copy after the last call only.
		for _, interval := range []time.Duration{0, time.Hour} {
			g.StreamInterval = interval
			var seen []int
			got, err := g.GenerateResidentStream(prompt, maxNew, func(id int) bool { seen = append(seen, id); return true })
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) || !slices.Equal(seen, want) {
				t.Errorf("interval %v: resident stream %v (handed over %v), GenerateStream %v", interval, got, seen, want)
			}
			for _, stop := range []int{1, 2, 6} { // the prefill's token, the first call's, inside a call
				seen = nil
				got, err := g.GenerateResidentStream(prompt, maxNew, func(id int) bool { seen = append(seen, id); return len(seen) < stop })
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, want[:stop]) || !slices.Equal(seen, want[:stop]) {
					t.Errorf("interval %v, stopping at %d: %v (handed over %v), want %v", interval, stop, got, seen, want[:stop])
				}
			}
		}
		g.StreamInterval = 0
		if b := g.GraphsBuilt() - built; b != 0 {
			t.Errorf("%d graphs built after WarmUpResident", b)
		}
		one, err := g.GenerateResidentStream(prompt, 1, nil)
		if err != nil || !slices.Equal(one, want[:1]) {
			t.Errorf("one token: %v, %v; want %v", one, err, want[:1])
		}
	})
}

// TestGenerateResidentStreamErrors: a batch of two and a generation past maxLen are errors that
// say so, for every architecture (the token history has maxLen positions).
func TestGenerateResidentStreamErrors(t *testing.T) {
	backend := cpuBackend(t)
	cfg := DecodeCheckConfigs()[0]
	g := newSeededGreedy(t, backend, cfg, 1, 8, 1)
	defer g.Release()
	if _, err := g.GenerateResidentStream([]int{1, 2}, 8, nil); err == nil || !strings.Contains(err.Error(), "exceeds maxLen 8") {
		t.Errorf("past maxLen: %v", err)
	}
	g2 := newSeededGreedy(t, backend, cfg, 2, 8, 1)
	defer g2.Release()
	if _, err := g2.GenerateResidentStream([]int{1}, 2, nil); err == nil || !strings.Contains(err.Error(), "batch 1") {
		t.Errorf("batch 2: %v", err)
	}
}
