package training

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"

	"blackmamba/bm"
	"blackmamba/bm/data"
	"blackmamba/bm/tokenizer"
	"blackmamba/experiments/eval"
	"blackmamba/experiments/results"
	"blackmamba/experiments/train"
	"blackmamba/xla"
)

func tinyCorpus(t *testing.T) *data.Corpus {
	t.Helper()
	dir := filepath.Join(tokenizer.DefaultDataDir(), "corpus-tiny")
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		t.Skipf("no tiny corpus at %s (build it with: blackmamba data build -tiny)", dir)
	}
	c, err := data.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// twoRunOptions returns the cpu-smoke options shrunk to BlackMamba and dense Mamba on the tiny
// corpus, batch 1 × 16, for the given number of steps.
func twoRunOptions(t *testing.T, steps int) (Options, *data.Corpus) {
	c := tinyCorpus(t)
	o, err := Size("cpu-smoke")
	if err != nil {
		t.Fatal(err)
	}
	o.Architectures = []string{"", "-mamba"}
	o.Ablation = false
	o.SeqLen, o.Batch, o.Tokens = 16, 1, int64(steps*16)
	o.LogEvery, o.EvalEvery, o.EvalBatches, o.BalanceBatches = 1, 1, 1, 1
	o.Corpus = c
	return o, c
}

// scoredRunOptions returns twoRunOptions for 3 steps with a work folder of its own, progress
// and log to the test's log, and each trained model scored on the hand-made PIQA task
// (handMadePIQA).
func scoredRunOptions(t *testing.T) (Options, *data.Corpus) {
	o, c := twoRunOptions(t, 3)
	o.Workdir = t.TempDir()
	o.Progress, o.Log = testWriter{t}, testWriter{t}
	o.ZeroShot = handMadePIQA(t)
	return o, c
}

// handMadePIQA returns zero-shot options for a hand-made PIQA file of 3 examples, tokenized by
// bytes (ids < 256 fit the tiny models' vocabulary).
func handMadePIQA(t *testing.T) ZeroShotOptions {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "piqa.jsonl"), []byte(`{"query": "Question: a\n", "choices": ["b", "c"], "gold": 0}
{"query": "Question: d\n", "choices": ["e", "f"], "gold": 1}
{"query": "Question: g\n", "choices": ["h", "i"], "gold": 0}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	return ZeroShotOptions{Tasks: []string{"piqa"}, Dir: dir, Batch: 4, Encoder: byteEncoder{}}
}

// TestRunSmoke trains two tiny architectures for a few steps through Run and checks the
// result's bookkeeping: tokens and FLOPs follow from the batch shape and the FLOPs per token,
// losses are finite and start near ln(vocab), the threshold is the worst final loss (so every
// run reaches it), and the figures render.
func TestRunSmoke(t *testing.T) {
	backend := goBackend(t)
	o, c := scoredRunOptions(t)
	r, err := Run(backend, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range r.Runs {
		if run.ZeroShotError != "" || len(run.ZeroShot) != 1 || run.ZeroShot[0].Examples != 3 || run.ZeroShot[0].Chance != 0.5 {
			t.Errorf("%s: zero-shot results %+v (error %q), want piqa on 3 examples", run.Label, run.ZeroShot, run.ZeroShotError)
		}
	}
	if len(r.Runs) != 2 || r.Steps != 3 {
		t.Fatalf("got %d runs of %d steps, want 2 of 3", len(r.Runs), r.Steps)
	}
	worst := 0.0
	for _, run := range r.Runs {
		if run.Tokens != 3*16 || run.Steps != 3 || len(run.Records) != 3 {
			t.Errorf("%s: tokens %d steps %d records %d, want 48, 3, 3", run.Label, run.Tokens, run.Steps, len(run.Records))
		}
		last := run.Records[len(run.Records)-1]
		if want := float64(run.Tokens) * run.TrainFLOPsPerToken; math.Abs(last.FLOPs-want) > 1e-9*want {
			t.Errorf("%s: cumulative FLOPs %g, want tokens x FLOPs/token = %g", run.Label, last.FLOPs, want)
		}
		if l0 := run.Records[0].Loss; math.Abs(l0-math.Log(50277)) > 0.5 {
			t.Errorf("%s: first loss %.3f, want within 0.5 of ln(50277) = %.3f", run.Label, l0, math.Log(50277))
		}
		if len(run.FinalHeldOut) != len(c.Domains()) || math.IsNaN(run.FinalHeldOutMean) {
			t.Errorf("%s: final held-out %v", run.Label, run.FinalHeldOut)
		}
		if run.MoE != (run.Config == "tiny") {
			t.Errorf("%s: moe = %v", run.Label, run.MoE)
		}
		if run.MoE && (len(run.Balance) == 0 || run.BalanceError != "") {
			t.Errorf("%s: no balance analysis (error %q)", run.Label, run.BalanceError)
		}
		if run.MoE && len(last.ExpertCounts) != 2 {
			t.Errorf("%s: expert counts for %d layers, want 2", run.Label, len(last.ExpertCounts))
		}
		worst = max(worst, run.FinalHeldOutMean)
	}
	if r.Threshold != worst {
		t.Errorf("threshold %g, want worst final mean %g", r.Threshold, worst)
	}
	for _, run := range r.Runs {
		if !run.Reached || run.FLOPsToThreshold <= 0 {
			t.Errorf("%s: did not reach the threshold (%v, %g)", run.Label, run.Reached, run.FLOPsToThreshold)
		}
	}
	out := filepath.Join(t.TempDir(), "training.json")
	if err := r.WriteJSON(out); err != nil {
		t.Fatal(err)
	}
	back, err := ReadResult(out)
	if err != nil {
		t.Fatal(err)
	}
	paths, err := PlotAll(back, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 6 {
		t.Errorf("PlotAll wrote %v, want at least the 3 comparison figures as PNG and SVG", paths)
	}
}

// TestResumeMatchesUninterrupted trains the tiny BlackMamba 4 steps with a checkpoint at step
// 2, then resumes a copy of the run from step 2 (as after a kill) and checks that steps 3-4
// reproduce the uninterrupted losses (tolerance 1e-5 relative: same graphs, same data).
func TestResumeMatchesUninterrupted(t *testing.T) {
	c := tinyCorpus(t)
	if testing.Short() {
		t.Skip("short mode")
	}
	backend := goBackend(t)
	o, _ := Size("cpu-smoke")
	cfgSpec := func(dir string, resume bool) Spec {
		cfg := mustPreset(t, "tiny")
		return Spec{Cfg: cfg, Corpus: c, SeqLen: 16, Batch: 1, Steps: 4, LR: o.LR, Warmup: 1, Seed: 3,
			Dir: dir, Resume: resume, LogEvery: 1, CheckpointEvery: 2, EvalEvery: 0, EvalBatches: 1, Progress: testWriter{t}}
	}
	full := t.TempDir()
	if _, err := Train(backend, cfgSpec(full, false)); err != nil {
		t.Fatal(err)
	}
	want, err := results.ReadTrainLog(filepath.Join(full, train.MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	// The interrupted run: the state of the full run at its step-2 checkpoint.
	cut := t.TempDir()
	paths, steps, err := train.ListCheckpoints(full)
	if err != nil {
		t.Fatal(err)
	}
	var kept bool
	for i, p := range paths {
		if steps[i] == 2 {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cut, filepath.Base(p)), b, 0o644); err != nil {
				t.Fatal(err)
			}
			kept = true
		}
	}
	if !kept {
		t.Fatalf("no step-2 checkpoint among %v", steps)
	}
	m, err := os.ReadFile(filepath.Join(full, train.MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cut, train.MetricsFile), m, 0o644); err != nil {
		t.Fatal(err)
	}
	tr, err := Train(backend, cfgSpec(cut, true))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Summary.ResumedFrom != 2 {
		t.Fatalf("resumed from step %d, want 2", tr.Summary.ResumedFrom)
	}
	got, err := results.ReadTrainLog(filepath.Join(cut, train.MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("resumed log has %d records, uninterrupted %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Step != want[i].Step || math.Abs(got[i].Loss-want[i].Loss) > 1e-5*math.Abs(want[i].Loss) {
			t.Errorf("record %d: resumed step %d loss %.6f, uninterrupted step %d loss %.6f",
				i, got[i].Step, got[i].Loss, want[i].Step, want[i].Loss)
		}
	}
}

// TestRunResumeFinished runs the experiment twice in one work folder, the second time with
// Resume: the finished runs are loaded from their final checkpoints, not trained again (their
// metrics files are unchanged), and their results (records, held-out losses, steps, tokens,
// wall time, zero-shot scores of the loaded weights) equal the first run's.
func TestRunResumeFinished(t *testing.T) {
	backend := goBackend(t)
	o, _ := scoredRunOptions(t)
	first, err := Run(backend, o)
	if err != nil {
		t.Fatal(err)
	}
	metrics := func() map[string]string {
		m := map[string]string{}
		files, err := filepath.Glob(filepath.Join(o.Workdir, "*", train.MetricsFile))
		if err != nil || len(files) != 2 {
			t.Fatalf("metrics files %v (%v), want one per run", files, err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			m[f] = string(b)
		}
		return m
	}
	before := metrics()
	o.Resume = true
	var progress bytes.Buffer
	o.Progress = &progress
	again, err := Run(backend, o)
	if err != nil {
		t.Fatal(err)
	}
	if after := metrics(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("resuming finished runs changed their metrics files")
	}
	if n := strings.Count(progress.String(), "resuming from"); n != 2 {
		t.Errorf("%d runs resumed, want 2; progress:\n%s", n, progress.String())
	}
	if len(again.Runs) != len(first.Runs) {
		t.Fatalf("%d runs after resuming, %d before", len(again.Runs), len(first.Runs))
	}
	for i, a := range first.Runs {
		b := again.Runs[i]
		if a.Label != b.Label || a.Steps != b.Steps || a.Tokens != b.Tokens || a.FinalHeldOutMean != b.FinalHeldOutMean ||
			fmt.Sprint(a.FinalHeldOut) != fmt.Sprint(b.FinalHeldOut) || fmt.Sprint(a.Records) != fmt.Sprint(b.Records) {
			t.Errorf("run %s after resuming:\n %+v\nfirst:\n %+v", a.Label, b, a)
		}
		if last := a.Records[len(a.Records)-1].WallSeconds; b.WallSeconds < last || b.WallSeconds > a.WallSeconds {
			t.Errorf("run %s: wall %.3fs after resuming, want between its last record's %.3fs and the first call's %.3fs",
				a.Label, b.WallSeconds, last, a.WallSeconds)
		}
		for _, zs := range [][]eval.Result{a.ZeroShot, b.ZeroShot} {
			for j := range zs {
				zs[j].Seconds = 0 // the scoring's own time
			}
		}
		if len(b.ZeroShot) != 1 || fmt.Sprint(a.ZeroShot) != fmt.Sprint(b.ZeroShot) || b.ZeroShotError != "" {
			t.Errorf("run %s: zero-shot %+v (error %q) after resuming, %+v before", a.Label, b.ZeroShot, b.ZeroShotError, a.ZeroShot)
		}
	}
}

// TestGroupedInitMatchesTrainer trains the 7-block tiny-mamba-total two steps twice: with its
// variables initialised a few blocks at a time by bm.InitWeights (what Train does on a fresh
// start) and by the trainer's one initialisation graph. The two final checkpoints must hold the
// same bytes (their data SHA-256: weights, AdamW moments, step and random state).
func TestGroupedInitMatchesTrainer(t *testing.T) {
	c := tinyCorpus(t)
	backend := goBackend(t)
	cfg := mustPreset(t, "tiny-mamba-total")
	if n := len(cfg.Blocks()); n <= bm.DefaultInitBlocks {
		t.Fatalf("%s has %d blocks: too few to initialise in groups of %d", cfg.Name, n, bm.DefaultInitBlocks)
	}
	sums := map[bool]string{}
	for _, oneGraph := range []bool{false, true} {
		dir := t.TempDir()
		_, err := Train(backend, Spec{Cfg: cfg, Corpus: c, SeqLen: 16, Batch: 2, Steps: 2, LR: 1e-3, Warmup: 0, Seed: 7,
			Dir: dir, LogEvery: 1, EvalBatches: 1, Progress: testWriter{t}, oneGraphInit: oneGraph})
		if err != nil {
			t.Fatal(err)
		}
		paths, _, err := train.ListCheckpoints(dir)
		if err != nil || len(paths) == 0 {
			t.Fatalf("checkpoints %v (%v)", paths, err)
		}
		_, meta, err := train.LoadCheckpoint(paths[0])
		if err != nil {
			t.Fatal(err)
		}
		sums[oneGraph] = meta[train.MetaDataSHA256]
	}
	if sums[false] == "" || sums[false] != sums[true] {
		t.Errorf("final checkpoint data: %s initialised in groups, %s in one graph; want the same", sums[false], sums[true])
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func mustPreset(t *testing.T, name string) bm.Config {
	t.Helper()
	c, err := bm.Preset(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func goBackend(t *testing.T) backends.Backend {
	t.Helper()
	b, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// byteEncoder tokenizes text as its bytes.
type byteEncoder struct{}

func (byteEncoder) Encode(s string) []int {
	ids := make([]int, len(s))
	for i := range len(s) {
		ids[i] = int(s[i])
	}
	return ids
}

func TestMerge(t *testing.T) {
	rec := func(loss float64) []results.TrainRecord {
		return []results.TrainRecord{{Step: 1, Tokens: 100, FLOPs: 1e9, HeldOut: map[string]float64{"a": loss + 1}},
			{Step: 2, Tokens: 200, FLOPs: 2e9, HeldOut: map[string]float64{"a": loss}}}
	}
	base := Result{Family: "small", SeqLen: 512, Batch: 16, TokenBudget: 1000, Steps: 2, Seed: 1, LR: 1e-3, DType: "bfloat16", Corpus: "c"}
	a, b := base, base
	a.Runs = []RunResult{{Label: "small", FinalHeldOutMean: 5, Records: rec(5)}, {Label: "small argmax", Ablation: true, FinalHeldOutMean: 7, Records: rec(7)}}
	b.Runs = []RunResult{{Label: "small-mamba", FinalHeldOutMean: 6, Records: rec(6)}, {Label: "small", FinalHeldOutMean: 4.5, Records: rec(4.5)}}
	m, err := Merge(0, &a, &b)
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, r := range m.Runs {
		labels = append(labels, r.Label)
	}
	if got := strings.Join(labels, ","); got != "small,small-mamba,small argmax" {
		t.Errorf("merged runs %s, want small,small-mamba,small argmax", got)
	}
	if m.Runs[0].FinalHeldOutMean != 4.5 {
		t.Errorf("the later run of a label must replace the earlier: got loss %g", m.Runs[0].FinalHeldOutMean)
	}
	if m.Threshold != 6 {
		t.Errorf("threshold %g, want the worst non-ablation final loss 6", m.Threshold)
	}
	if !m.Runs[0].Reached || m.Runs[2].Reached {
		t.Errorf("reached: %v %v, want BlackMamba to reach 6 and the ablation (7) not", m.Runs[0].Reached, m.Runs[2].Reached)
	}
	c := base
	c.Batch = 8
	c.Runs = b.Runs
	if _, err := Merge(0, &a, &c); err == nil || !strings.Contains(err.Error(), "batch 8") {
		t.Errorf("merging results of different batch sizes: err %v, want one naming the settings", err)
	}
}

// TestParallelMatchesSequential trains two runs (BlackMamba and dense Mamba) one at a time and
// then side by side, and checks that the parallel result lists them in plan order with the same
// per-step and held-out losses (the runs are independent and seeded, so the numbers must be
// identical), and that AfterRun saw a growing result after each finished run.
func TestParallelMatchesSequential(t *testing.T) {
	backend := goBackend(t)
	o, _ := twoRunOptions(t, 2)
	o.EvalEvery, o.BalanceBatches = 2, 0
	o.Log = testWriter{t}
	runAll := func(parallel int) (*Result, []int) {
		o := o
		o.Parallel = parallel
		o.Workdir = t.TempDir()
		var seen []int
		o.AfterRun = func(r *Result) error { seen = append(seen, len(r.Runs)); return nil }
		var buf bytes.Buffer
		o.Progress = &buf
		r, err := Run(backend, o)
		if err != nil {
			t.Fatalf("parallel %d: %v", parallel, err)
		}
		return r, seen
	}
	seq, _ := runAll(1)
	par, seen := runAll(2)
	if fmt.Sprint(seen) != "[1 2]" {
		t.Errorf("AfterRun saw results of %v runs, want [1 2]", seen)
	}
	if len(par.Runs) != len(seq.Runs) {
		t.Fatalf("parallel result has %d runs, sequential %d", len(par.Runs), len(seq.Runs))
	}
	for i := range seq.Runs {
		a, b := seq.Runs[i], par.Runs[i]
		if a.Label != b.Label || len(a.Records) != len(b.Records) || a.FinalHeldOutMean != b.FinalHeldOutMean {
			t.Errorf("run %d: sequential %s (%d records, held-out %v), parallel %s (%d records, held-out %v)",
				i, a.Label, len(a.Records), a.FinalHeldOutMean, b.Label, len(b.Records), b.FinalHeldOutMean)
			continue
		}
		for j := range a.Records {
			if a.Records[j].Loss != b.Records[j].Loss {
				t.Errorf("%s step %d: loss %v one at a time, %v two at a time", a.Label, a.Records[j].Step, a.Records[j].Loss, b.Records[j].Loss)
			}
		}
	}
}

// TestPrefixWriter checks that lines written in pieces come out whole, each with the prefix.
func TestPrefixWriter(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	w := &prefixWriter{w: &buf, mu: &mu, prefix: "[a] "}
	for _, s := range []string{"step 1", " loss 2\nstep", " 2\rstep 3\n"} {
		if _, err := w.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := buf.String(), "[a] step 1 loss 2\n[a] step 2\r[a] step 3\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
