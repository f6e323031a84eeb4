package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
	"blackmamba/bm/data"
	"blackmamba/bm/tokenizer"
	"blackmamba/bm/weights"
	"blackmamba/experiments"
	"blackmamba/experiments/eval"
	"blackmamba/xla"
)

const fixtureModel = "../../../bm/weights/testdata/fixture"

// fixtureEncoder maps each byte b to 1 + b mod 500, ids inside the fixture's vocabulary of 512.
type fixtureEncoder struct{}

func (fixtureEncoder) Encode(s string) []int {
	ids := make([]int, len(s))
	for i := range len(s) {
		ids[i] = 1 + int(s[i])%500
	}
	return ids
}

const piqaRows = `{"query": "Question: How do I open a jar?", "choices": ["Twist the lid.", "Eat the lid."], "gold": 0}
{"query": "Question: How do I dry wet shoes?", "choices": ["Stuff them with newspaper.", "Fill them with water."], "gold": 0}
{"query": "Question: How to cool soup?", "choices": ["Leave it on the stove.", "Stir it in a cold bowl.", "Boil it."], "gold": 1}
`

func TestEvalTasksFixture(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "piqa.jsonl"), []byte(piqaRows), 0o644); err != nil {
		t.Fatal(err)
	}
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	m, err := experiments.LoadModel(fixtureModel, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := eval.NewModelScorer(backend, m.Ctx, m.Cfg, 4)
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	res, err := evalTasks(s, fixtureEncoder{}, dir, []string{"piqa"}, 0, 4, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Task != "piqa" || res[0].Examples != 3 {
		t.Fatalf("results %+v: want one piqa result over 3 examples", res)
	}
	// Reference: score every choice one request at a time and pick the best.
	task, err := eval.Load(dir, "piqa", 0)
	if err != nil {
		t.Fatal(err)
	}
	hits := 0
	for _, ex := range task.Examples {
		best, bestLL := -1, math.Inf(-1)
		for j := range ex.Contexts {
			sc, err := s.Score([]eval.Request{eval.EncodePair(fixtureEncoder{}, ex.Contexts[j], ex.Continuations[j])})
			if err != nil {
				t.Fatal(err)
			}
			if sc[0].LogLik > bestLL {
				best, bestLL = j, sc[0].LogLik
			}
		}
		if best == ex.Gold {
			hits++
		}
	}
	if want := float64(hits) / 3; math.Abs(res[0].Acc-want) > 1e-12 {
		t.Errorf("acc %.4f, want %.4f from one-by-one scoring", res[0].Acc, want)
	}
	if !strings.Contains(progress.String(), "piqa: 7/7 requests (100%)") {
		t.Errorf("progress output %q lacks the final count", progress.String())
	}
}

func TestEvalCommandErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "piqa.jsonl"), []byte(piqaRows), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, want string
		args       []string
		neox       bool
	}{
		{"no model", "-model is required", []string{"-tasks", "piqa", "-data", dir}, false},
		{"unknown task", `unknown task "nope"`, []string{"-model", fixtureModel, "-tasks", "nope", "-data", dir}, false},
		{"no corpus", "-perplexity needs -corpus", []string{"-model", fixtureModel, "-perplexity"}, false},
		// The NeoX tokenizer's ids go up to 50276; the fixture has 512 embeddings.
		{"vocabulary", "outside the model's vocabulary 512", []string{"-model", fixtureModel, "-tasks", "piqa", "-data", dir, "-backend", "go"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.neox {
				if _, err := os.Stat(tokenizer.NeoXPath(tokenizer.DefaultDataDir())); err != nil {
					t.Skipf("the NeoX tokenizer is not in the data folder: %v", err)
				}
			}
			fs := flag.NewFlagSet("eval", flag.ContinueOnError)
			err := runEval(fs, c.args)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// TestEvalPerplexityCommand runs "eval -perplexity" on a random tiny checkpoint and the built
// corpus and checks the report against the scorer called directly.
func TestEvalPerplexityCommand(t *testing.T) {
	corpus := filepath.Join(tokenizer.DefaultDataDir(), "corpus-tiny")
	if _, err := os.Stat(filepath.Join(corpus, "manifest.json")); err != nil {
		t.Skipf("no tiny corpus in the data folder (blackmamba data build -tiny): %v", err)
	}
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := bm.MustPreset("tiny")
	cfg.MaxSeqLen = 32
	m, _ := bm.New(cfg)
	ctx := context.New()
	if _, err := context.ExecOnce(backend, ctx, func(ctx *context.Context, tok *Node) *Node {
		return m.Forward(ctx, tok, bm.ForwardOptions{}).Logits
	}, [][]int32{{1, 2}}); err != nil {
		t.Fatal(err)
	}
	modelDir := t.TempDir()
	if err := weights.WriteConfig(modelDir, cfg); err != nil {
		t.Fatal(err)
	}
	if err := weights.SaveContext(filepath.Join(modelDir, weights.CheckpointFile), ctx, nil); err != nil {
		t.Fatal(err)
	}
	rep := runEvalReport(t, "-model", modelDir, "-perplexity", "-corpus", corpus, "-seq-len", "16",
		"-max-windows", "3", "-batch", "2", "-backend", "go")
	c, err := data.Open(corpus)
	if err != nil {
		t.Fatal(err)
	}
	s, err := eval.NewModelScorer(backend, ctx, cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	want, err := s.HeldOutPerplexity(c, 16, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.SeqLen != 16 || len(rep.Perplexity) != len(want) {
		t.Fatalf("report %+v: want seq_len 16 and %d domains", rep, len(want))
	}
	for i, w := range want {
		g := rep.Perplexity[i]
		if g.Domain != w.Domain || g.Tokens != w.Tokens || math.Abs(g.Perplexity-w.Perplexity) > 1e-4*w.Perplexity {
			t.Errorf("domain %d: report %+v, want %+v", i, g, w)
		}
	}
}

// runEvalReport runs "blackmamba eval" with args and a report file, and returns the report.
func runEvalReport(t *testing.T, args ...string) evalReport {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	if err := runEval(flag.NewFlagSet("eval", flag.ContinueOnError), append(args, "-out", out)); err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep evalReport
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}
