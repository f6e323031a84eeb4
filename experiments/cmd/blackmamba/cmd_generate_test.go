package main

import (
	"flag"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"blackmamba/bm"
	"blackmamba/bm/tokenizer"
	"blackmamba/experiments"
	"blackmamba/experiments/eval"
	"blackmamba/xla"
)

// TestModelAndSamplingFlags checks the errors of generate and eval for bad model choices and
// sampling flags: each names the flag and the value given. All fail before a backend or a
// model is created.
func TestModelAndSamplingFlags(t *testing.T) {
	ok := []string{"-random", "tiny", "-prompt-ids", "1,2"}
	cases := []struct {
		name, cmd, want string
		args            []string
	}{
		{"generate: both models", "generate", `-model "m" and -random "tiny" exclude each other`, []string{"-model", "m", "-random", "tiny", "-prompt-ids", "1"}},
		{"generate: no model", "generate", "-model is required", []string{"-prompt-ids", "1"}},
		{"eval: both models", "eval", `-model "m" and -random "1.5b" exclude each other`, []string{"-model", "m", "-random", "1.5b", "-tasks", "piqa", "-data", "d"}},
		{"eval: no model", "eval", "-model is required", []string{"-tasks", "piqa", "-data", "d"}},
		{"max-tokens 0", "generate", "-max-tokens 0: want at least 1", append(slices.Clone(ok), "-max-tokens", "0")},
		{"negative temperature", "generate", "-temperature -0.5: want a finite value >= 0", append(slices.Clone(ok), "-temperature", "-0.5")},
		{"NaN temperature", "generate", "-temperature NaN:", append(slices.Clone(ok), "-temperature", "NaN")},
		{"infinite temperature", "generate", "-temperature +Inf:", append(slices.Clone(ok), "-temperature", "Inf")},
		{"negative top-k", "generate", "-top-k -3: want >= 0", append(slices.Clone(ok), "-top-k", "-3")},
		{"top-p above 1", "generate", "-top-p 1.5: want a value in (0, 1]", append(slices.Clone(ok), "-top-p", "1.5")},
		{"negative top-p", "generate", "-top-p -0.2:", append(slices.Clone(ok), "-top-p", "-0.2")},
		{"NaN top-p", "generate", "-top-p NaN:", append(slices.Clone(ok), "-top-p", "NaN")},
		{"unknown step weights", "generate", `-step-weights "rows": want auto, inout, transposed or folded`, append(slices.Clone(ok), "-step-weights", "rows")},
		{"negative unroll", "generate", "-unroll -2: want a positive number of steps", append(slices.Clone(ok), "-unroll", "-2")},
		{"negative stream interval", "generate", "-stream-interval -1s: want a duration of 0 or more", append(slices.Clone(ok), "-stream-interval", "-1s")},
		{"unknown dtype", "generate", `-dtype "fp16": want float32, bfloat16 or auto`, append(slices.Clone(ok), "-dtype", "fp16")},
		{"unknown step fuse", "generate", `-step-fuse "resid"`, append(slices.Clone(ok), "-step-fuse", "resid")},
		{"step fuse without folded", "generate", `step fuse "residual" needs the folded step weights, not transposed`, append(slices.Clone(ok), "-backend", "go", "-step-fuse", "residual", "-step-weights", "transposed")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := flag.NewFlagSet(c.cmd, flag.ContinueOnError)
			var err error
			if c.cmd == "eval" {
				err = runEval(fs, c.args)
			} else {
				err = runGenerate(fs, c.args)
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got error %v, want one containing %q", err, c.want)
			}
		})
	}
	for _, v := range []struct {
		maxTokens   int
		temperature float64
		topK        int
		topP        float64
	}{{1, 0, 0, 1}, {128, 0.7, 40, 0.9}, {5, 2, 0, 0}, {5, 1, 1, 1e-6}} {
		if err := checkSampling(v.maxTokens, bm.SamplerOptions{Temperature: v.temperature, TopK: v.topK, TopP: v.topP}); err != nil {
			t.Errorf("valid flags %+v rejected: %v", v, err)
		}
	}
}

// TestOpenModelRandom checks that -random builds the preset with weights that depend only on
// the seed, and reports a bad preset or activation by its flag.
func TestOpenModelRandom(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	values := func(seed int64) map[string][]float32 {
		m, err := openModel(backend, "", "tiny", "gelu", seed)
		if err != nil {
			t.Fatal(err)
		}
		if m.Cfg.Name != "tiny" || m.Cfg.Activation != "gelu" || m.Path != "random:tiny" {
			t.Fatalf("model %s: config %s with activation %s, want tiny with gelu", m.Path, m.Cfg.Name, m.Cfg.Activation)
		}
		out := map[string][]float32{}
		for v := range m.Ctx.IterVariables() {
			val, err := v.Value()
			if err != nil {
				t.Fatal(err)
			}
			if val.DType().IsFloat() {
				out[v.ScopeAndName()] = tensors.MustCopyFlatData[float32](val)
			}
		}
		return out
	}
	a, b, c := values(7), values(7), values(8)
	emb := "/embedding/word_embeddings/weight"
	if len(a) < 10 || a[emb] == nil {
		t.Fatalf("%d float variables, want the tiny model's (with %s)", len(a), emb)
	}
	for name, x := range a {
		if !slices.Equal(x, b[name]) {
			t.Errorf("%s differs between two models of seed 7", name)
		}
	}
	if slices.Equal(a[emb], c[emb]) {
		t.Errorf("seeds 7 and 8 drew the same embedding")
	}
	for _, bad := range []struct{ random, activation, want string }{
		{"nope", "", `-random: bm: unknown config preset "nope"`},
		{"tiny", "relu", `-activation "relu": want silu or gelu`},
	} {
		if _, err := openModel(backend, "", bad.random, bad.activation, 1); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("-random %q -activation %q: error %v, want one containing %q", bad.random, bad.activation, err, bad.want)
		}
	}
}

// captureStdout runs fn with the standard output going to a pipe and returns what it wrote.
func captureStdout(t *testing.T, fn func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		done <- b
	}()
	err = fn()
	os.Stdout = saved
	w.Close()
	return string(<-done), err
}

// TestGenerateRandom runs "generate -random tiny" with greedy decoding and checks the printed
// ids against experiments.Generate on the same random model (same seed).
func TestGenerateRandom(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	run := func(extra ...string) []int {
		out, err := captureStdout(t, func() error {
			return runGenerate(flag.NewFlagSet("generate", flag.ContinueOnError), append([]string{
				"-random", "tiny", "-seed", "5", "-prompt-ids", "11,12,13", "-max-tokens", "6", "-stop-eos=false", "-backend", "go"}, extra...))
		})
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, f := range strings.Fields(out) {
			id, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("output %q: %q is not an id", out, f)
			}
			got = append(got, id)
		}
		return got
	}
	got := run()
	// The folded step (float32 on this backend) gives the same tokens with -step-fuse auto
	// (residual there), none and both rearrangements; auto with the transposed copies is none;
	// the held steps (-resident=false), four steps per call, and the resident steps with the
	// tokens copied after every call or only at the end give them too.
	for _, extra := range [][]string{
		{"-step-weights", "folded"},
		{"-step-weights", "folded", "-step-fuse", "none"},
		{"-step-weights", "folded", "-step-fuse", "gate,residual"},
		{"-step-weights", "transposed", "-step-fuse", "auto"},
		{"-resident=false"},
		{"-resident=false", "-unroll", "4"},
		{"-unroll", "4"},
		{"-stream-interval", "0"},
		{"-unroll", "4", "-stream-interval", "1h"},
		{"-step-weights", "folded", "-step-fuse", "residual,router"},
	} {
		if fused := run(extra...); !slices.Equal(fused, got) {
			t.Errorf("%v printed %v, want %v", extra, fused, got)
		}
	}
	m, err := openModel(backend, "", "tiny", "", 5)
	if err != nil {
		t.Fatal(err)
	}
	// The held steps, one per call, as the reference.
	st, err := experiments.Generate(backend, m, []int{11, 12, 13}, experiments.GenerateOptions{MaxTokens: 6, Sampler: bm.SamplerOptions{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, st.Tokens) || len(got) != 6 {
		t.Errorf("generate printed %v, want the 6 greedy tokens %v", got, st.Tokens)
	}
}

// TestEvalRandom runs "eval -random tiny" on three PIQA-format rows and checks the report:
// the random model's name, seed and size, and the accuracy of the same random model scored
// directly.
func TestEvalRandom(t *testing.T) {
	tok, err := tokenizer.LoadNeoX(tokenizer.DefaultDataDir())
	if err != nil {
		t.Skipf("the NeoX tokenizer is not in the data folder: %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "piqa.jsonl"), []byte(piqaRows), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := runEvalReport(t, "-random", "tiny", "-seed", "3", "-tasks", "piqa", "-data", dir, "-batch", "8", "-backend", "go")
	total, _ := bm.MustPreset("tiny").ParamCounts()
	if rep.Model != "random:tiny" || rep.Seed != 3 || rep.Params != total || len(rep.Tasks) != 1 || rep.Tasks[0].Examples != 3 {
		t.Fatalf("report %+v: want random:tiny, seed 3, %d parameters and one task of 3 examples", rep, total)
	}
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	m, err := openModel(backend, "", "tiny", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	s, err := eval.NewModelScorer(backend, m.Ctx, m.Cfg, 8)
	if err != nil {
		t.Fatal(err)
	}
	want, err := evalTasks(s, tok, dir, []string{"piqa"}, 0, 8, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := rep.Tasks[0], want[0]; math.Abs(g.Acc-w.Acc) > 1e-12 || math.Abs(g.AccNorm-w.AccNorm) > 1e-12 {
		t.Errorf("report acc %.4f / acc_norm %.4f, the same model scored directly %.4f / %.4f", g.Acc, g.AccNorm, w.Acc, w.AccNorm)
	}
}

// TestStepFusionNames checks that the -step-fuse help names every fusion of bm.StepFusions
// once, plus once per fusion that needs it, and says what each one needs.
func TestStepFusionNames(t *testing.T) {
	help := stepFusionNames()
	for _, f := range bm.StepFusions {
		want := 1
		for _, need := range bm.StepFusionNeeds {
			if need.Fusion == f {
				want++
			}
		}
		if n := strings.Count(help, strconv.Quote(f)); n != want {
			t.Errorf("help %q names %q %d times, want %d", help, f, n, want)
		}
		if need, ok := bm.StepFusionNeeds[f]; ok && !strings.Contains(help, strconv.Quote(f)+" (with "+strconv.Quote(need.Fusion)+")") {
			t.Errorf("help %q does not say that %q needs %q", help, f, need.Fusion)
		}
	}
}
