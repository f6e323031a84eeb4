package eval

import (
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
	"blackmamba/bm/data"
	"blackmamba/bm/tokenizer"
	"blackmamba/xla"
)

// modEncoder maps each byte b to 1 + b mod 89: ids within a 90-token real vocabulary.
type modEncoder struct{}

func (modEncoder) Encode(s string) []int {
	ids := make([]int, len(s))
	for i := range len(s) {
		ids[i] = 1 + int(s[i])%89
	}
	return ids
}

// tinyModel returns a backend, a context holding a randomly initialised tiny model with a
// padded vocabulary (Vocab 97, VocabReal 90) and its config.
func tinyModel(t *testing.T) (backends.Backend, *context.Context, bm.Config) {
	t.Helper()
	backend, err := backends.NewWithConfig(xla.CPUConfig) // the pure-Go CPU backend
	if err != nil {
		t.Fatal(err)
	}
	cfg := bm.MustPreset("tiny")
	cfg.Vocab, cfg.VocabReal = 97, 90
	cfg.MaxSeqLen = 64
	m, err := bm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.New()
	// Create the variables with a first forward pass.
	if _, err := context.ExecOnce(backend, ctx, func(ctx *context.Context, tok *Node) *Node {
		return m.Forward(ctx, tok, bm.ForwardOptions{}).Logits
	}, [][]int32{{1, 2}}); err != nil {
		t.Fatal(err)
	}
	return backend, ctx, cfg
}

// refLogProbs runs Model.Forward on ids[:len-1] and returns log p(ids[t+1] | ids[:t+1]) for
// every t and whether each target is the argmax, from a log-softmax in float64 over the real
// vocabulary.
func refLogProbs(t *testing.T, backend backends.Backend, ctx *context.Context, cfg bm.Config, ids []int) ([]float64, []bool, []int) {
	t.Helper()
	m, _ := bm.New(cfg)
	in := make([]int32, len(ids)-1)
	for i := range in {
		in[i] = int32(ids[i])
	}
	out, err := context.ExecOnce(backend, ctx.Reuse(), func(ctx *context.Context, tok *Node) *Node {
		return m.Forward(ctx, tok, bm.ForwardOptions{Routing: bm.RoutingArgmax}).Logits
	}, tensors.FromFlatDataAndDimensions(in, 1, len(in)))
	if err != nil {
		t.Fatal(err)
	}
	logits := tensors.MustCopyFlatData[float32](out)
	V := cfg.Vocab
	lps := make([]float64, len(in))
	hits := make([]bool, len(in))
	argmax := make([]int, len(in))
	for p := range in {
		row := logits[p*V : p*V+cfg.VocabReal]
		mx, best := math.Inf(-1), 0
		for i, x := range row {
			if float64(x) > mx {
				mx, best = float64(x), i
			}
		}
		var z float64
		for _, x := range row {
			z += math.Exp(float64(x) - mx)
		}
		lps[p] = float64(row[ids[p+1]]) - mx - math.Log(z)
		hits[p] = best == ids[p+1]
		argmax[p] = best
	}
	return lps, hits, argmax
}

func TestModelScorerMatchesForward(t *testing.T) {
	backend, ctx, cfg := tinyModel(t)
	enc := modEncoder{}
	pairs := [][2]string{
		{"The cat sat on the", " mat"},
		{"a", "b"},
		{"Question: what is two plus two? Answer:", " four, of course"},
		// 80 context bytes + 6: longer than MaxSeqLen+1 = 65, so the context is left-truncated.
		{"0123456789abcdefghij0123456789abcdefghij0123456789abcdefghij0123456789abcdefghij", " tail!"},
	}
	var reqs []Request
	for _, p := range pairs {
		reqs = append(reqs, EncodePair(enc, p[0], p[1]))
	}
	// A request whose continuation is its own greedy decoding, so that Greedy is true once.
	seq := enc.Encode("hello world")
	n := len(seq)
	for range 3 {
		_, _, best := refLogProbs(t, backend, ctx, cfg, append(seq, 0))
		seq = append(seq, best[len(best)-1])
	}
	reqs = append(reqs, Request{Context: seq[:n], Continuation: seq[n:]})
	sawGreedy := false
	for _, batch := range []int{1, 3, 8} {
		s, err := NewModelScorer(backend, ctx, cfg, batch)
		if err != nil {
			t.Fatal(err)
		}
		s.MinBucket = 8
		got, err := s.Score(reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range reqs {
			seq := append(append([]int(nil), r.Context...), r.Continuation...)
			if len(seq) > cfg.MaxSeqLen+1 {
				seq = seq[len(seq)-cfg.MaxSeqLen-1:]
			}
			lps, hits, _ := refLogProbs(t, backend, ctx, cfg, seq)
			var want float64
			greedy := true
			for p := len(lps) - len(r.Continuation); p < len(lps); p++ {
				want += lps[p]
				greedy = greedy && hits[p]
			}
			if d := math.Abs(got[i].LogLik - want); d > 1e-4*max(1, math.Abs(want)) {
				t.Errorf("batch %d, request %d: LogLik %.6f, want %.6f from Forward (diff %.2g)", batch, i, got[i].LogLik, want, d)
			}
			if got[i].Greedy != greedy {
				t.Errorf("batch %d, request %d: Greedy %v, want %v", batch, i, got[i].Greedy, greedy)
			}
			sawGreedy = sawGreedy || greedy
		}
	}
	if !sawGreedy {
		t.Error("no request had a greedy continuation: the Greedy flag was not exercised")
	}
}

func TestWindowsPerplexityMatchesForward(t *testing.T) {
	backend, ctx, cfg := tinyModel(t)
	const T = 12
	windows := [][]int{}
	for w := range 3 {
		win := make([]int, T+1)
		for i := range win {
			win[i] = (7*w + 13*i + 5) % cfg.VocabReal
		}
		windows = append(windows, win)
	}
	var sum float64
	for _, win := range windows {
		lps, _, _ := refLogProbs(t, backend, ctx, cfg, win)
		for _, l := range lps {
			sum += l
		}
	}
	want := math.Exp(-sum / float64(len(windows)*T))
	s, err := NewModelScorer(backend, ctx, cfg, 2)
	if err != nil {
		t.Fatal(err)
	}
	k := 0
	next := func() ([]int32, error) { // batches of 2 then 1 windows, as a held-out loader gives
		if k >= len(windows) {
			return nil, io.EOF
		}
		var out []int32
		for j := k; j < min(k+2, len(windows)); j++ {
			for _, id := range windows[j] {
				out = append(out, int32(id))
			}
		}
		k += 2
		return out, nil
	}
	got, n, err := s.WindowsPerplexity(next, T)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(windows)*T) {
		t.Errorf("counted %d tokens, want %d", n, len(windows)*T)
	}
	if math.Abs(got-want) > 1e-4*want {
		t.Errorf("perplexity %.6f, want %.6f from Forward", got, want)
	}
}

func TestModelScorerRejectsOutOfVocabulary(t *testing.T) {
	backend, ctx, cfg := tinyModel(t)
	s, err := NewModelScorer(backend, ctx, cfg, 2)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Score([]Request{{Context: []int{1, 2}, Continuation: []int{95}}})
	if err == nil || !strings.Contains(err.Error(), "tokenizer id 95 outside the model's vocabulary 90") {
		t.Errorf("got error %v, want one naming id 95 and vocabulary 90", err)
	}
}

func TestHeldOutPerplexityMatchesForward(t *testing.T) {
	var c *data.Corpus
	for _, name := range []string{"corpus-tiny", "corpus"} {
		dir := filepath.Join(tokenizer.DefaultDataDir(), name)
		if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
			continue
		}
		var err error
		if c, err = data.Open(dir); err != nil {
			t.Fatal(err)
		}
		break
	}
	if c == nil {
		t.Skip("no built corpus in the data folder (blackmamba data build -tiny)")
	}
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := bm.MustPreset("tiny") // the NeoX vocabulary, as the corpus
	cfg.MaxSeqLen = 64
	m, _ := bm.New(cfg)
	ctx := context.New()
	if _, err := context.ExecOnce(backend, ctx, func(ctx *context.Context, tok *Node) *Node {
		return m.Forward(ctx, tok, bm.ForwardOptions{}).Logits
	}, [][]int32{{1, 2}}); err != nil {
		t.Fatal(err)
	}
	const T, windows = 16, 3
	s, err := NewModelScorer(backend, ctx, cfg, 2) // batches of 2 windows: the third is cut from a second batch
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.HeldOutPerplexity(c, T, windows, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(c.Domains()) {
		t.Fatalf("%d domains, want %d", len(got), len(c.Domains()))
	}
	for i, dom := range c.Domains() {
		w, err := c.HeldOut(dom, T, windows).Next()
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for r := range windows {
			ids := make([]int, T+1)
			for j := range ids {
				ids[j] = int(w[r*(T+1)+j])
			}
			lps, _, _ := refLogProbs(t, backend, ctx, cfg, ids)
			for _, l := range lps {
				sum += l
			}
		}
		want := math.Exp(-sum / (windows * T))
		if got[i].Domain != dom || got[i].Tokens != windows*T || math.Abs(got[i].Perplexity-want) > 1e-4*want {
			t.Errorf("domain %s: got %+v, want perplexity %.4f over %d tokens", dom, got[i], want, windows*T)
		}
	}
}
