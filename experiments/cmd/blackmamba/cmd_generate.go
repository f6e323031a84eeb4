package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/bm"
	"blackmamba/bm/tokenizer"
	"blackmamba/experiments"
	"blackmamba/xla"
)

func init() {
	register(&command{
		name:    "generate",
		summary: "continue a prompt with a model (released BlackMamba weights or a project checkpoint), streaming the text",
		run:     runGenerate,
	})
}

// checkModelFlags checks that exactly one of -model and -random was given.
func checkModelFlags(path, random string) error {
	switch {
	case path != "" && random != "":
		return fmt.Errorf("-model %q and -random %q exclude each other: give a model file or a preset for random weights", path, random)
	case path == "" && random == "":
		return fmt.Errorf("-model is required: a model directory, a .safetensors checkpoint or a released pytorch_model.bin (or -random PRESET for random weights)")
	}
	return nil
}

// openModel loads the model at path (experiments.LoadModel) or, when random is not empty,
// builds the preset or JSON config named by random with float32 weights drawn by the model's
// initialisation from seed, on backend (for timing a model size without its weights).
// activation, when not empty, overrides the expert activation ("silu" or "gelu").
func openModel(backend backends.Backend, path, random, activation string, seed int64) (*experiments.LoadedModel, error) {
	if err := checkModelFlags(path, random); err != nil {
		return nil, err
	}
	if random == "" {
		return experiments.LoadModel(path, activation)
	}
	cfg, err := bm.LoadConfig(random)
	if err != nil {
		return nil, fmt.Errorf("-random: %w", err)
	}
	if err := experiments.SetActivation(&cfg, activation); err != nil {
		return nil, fmt.Errorf("-%w", err) // the flag's name: -activation
	}
	start := time.Now()
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, seed)
	if err := bm.InitWeights(backend, ctx, cfg); err != nil {
		return nil, fmt.Errorf("-random %s: initialising the weights: %w", random, err)
	}
	fmt.Fprintf(os.Stderr, "random weights for %s (seed %d) in %.1fs\n", cfg.Name, seed, time.Since(start).Seconds())
	return &experiments.LoadedModel{Cfg: cfg, Ctx: ctx, Path: "random:" + random}, nil
}

// checkSampling checks the generation flags: -max-tokens >= 1, and the sampler's options by
// bm.SamplerOptions.Validate, reported under their flags' names.
func checkSampling(maxTokens int, o bm.SamplerOptions) error {
	if maxTokens < 1 {
		return fmt.Errorf("-max-tokens %d: want at least 1", maxTokens)
	}
	err := o.Validate()
	var oe *bm.SamplerOptionError
	if errors.As(err, &oe) {
		return fmt.Errorf("-%s %v: %s", samplerFlags[oe.Field], oe.Value, oe.Want)
	}
	return err
}

// samplerFlags are the flags of bm.SamplerOptions' fields.
var samplerFlags = map[string]string{"Temperature": "temperature", "TopK": "top-k", "TopP": "top-p"}

func runGenerate(fs *flag.FlagSet, args []string) error {
	modelPath := fs.String("model", "", "model: a directory (config.json + model.safetensors or pytorch_model.bin), a .safetensors checkpoint, or a released pytorch_model.bin with config.json beside it")
	random := fs.String("random", "", "instead of -model: a preset (or JSON config) with random weights seeded by -seed, e.g. 1.5b, to time generation at that size")
	prompt := fs.String("prompt", "", "prompt text (NeoX tokenizer)")
	promptIDs := fs.String("prompt-ids", "", "prompt as comma-separated token ids instead of -prompt (output printed as ids)")
	maxTokens := fs.Int("max-tokens", 128, "tokens to generate at most")
	temperature := fs.Float64("temperature", 0, "sampling temperature; 0 is greedy")
	topK := fs.Int("top-k", 0, "keep the k most likely tokens; 0 keeps all")
	topP := fs.Float64("top-p", 1, "nucleus sampling probability; 1 keeps all")
	seed := fs.Uint64("seed", 1, "random seed of the sampler (and of the weights with -random)")
	activation := fs.String("activation", "", "override the expert activation: silu (the paper's SwiGLU) or gelu (the released inference code); empty keeps the config's")
	stopEOS := fs.Bool("stop-eos", true, "stop after the end-of-text token (id 0)")
	stepWeights := fs.String("step-weights", "auto", "layout of the weights the decoding steps read: inout (the model's), transposed (copies made once, as much memory again as the matmul weights), folded (those copies with the norm gains folded into the blocks' first products) or auto (when the copies take at most a quarter of the GPU's memory, or of the machine's: folded on an NVIDIA GPU, transposed on the pure-Go backend, where each is the fastest)")
	stepFuse := fs.String("step-fuse", "auto", `rearrangements of the folded layout's batch-1 step (bm.Config.StepFuse): a comma-separated list of `+stepFusionNames()+`; "none"; or "auto": `+experiments.DefaultStepFuse+` when the steps read the folded weights (the fastest on an H200), none otherwise. Other than auto and none, only with the folded step weights`)
	warmUp := fs.Bool("warm-up", true, "compile and run the generation's graphs once on a dummy prompt before timing, so that the first-token time and tokens/s leave compilation out (it is reported as the warm-up)")
	resident := fs.Bool("resident", true, "greedy generation with every input of a call kept on the device and written over by the call's outputs (bm.GreedyDecoder.GenerateResidentStream; tokens arrive in groups, see -stream-interval): on XLA the calls are launched ahead of the device (see -sync-calls); on an H200 the 1.5b latency sweep took 0.474-0.495 ms per token this way at one step per call with the default -step-fuse (0.58-0.64 with residual alone), 1.31-1.71 ms with the held steps at 4; false runs the held steps; sampling ignores it")
	streamInterval := fs.Duration("stream-interval", 20*time.Millisecond, "with -resident: copy the generated tokens to the host at most this often (and at the end), printing those since the last copy together; 0 copies after every call (the tokens of -unroll steps)")
	syncCalls := fs.Bool("sync-calls", false, "with -resident: wait for each call to finish before launching the next (bm.GreedyDecoder.SyncCalls); by default, on XLA, the calls are launched ahead of the device")
	dtype := fs.String("dtype", "auto", `dtype of the matmuls and of the stored matmul weights: "float32", "bfloat16" (the weights converted after loading) or "auto" (bfloat16 on an NVIDIA GPU, where a decoding step reads half the bytes; else the model config's)`)
	unroll := fs.Int("unroll", 1, "greedy steps per executable call (tokens still stream one by one, k at a time); on an H200, 4 took the 1.5b from 2.21 to 1.57 ms per token but about 15 s longer to compile: for long generations")
	backendFlag := xla.AddFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := checkModelFlags(*modelPath, *random); err != nil {
		return err
	}
	if (*prompt == "") == (*promptIDs == "") {
		return fmt.Errorf("give exactly one of -prompt and -prompt-ids")
	}
	sampler := bm.SamplerOptions{Temperature: *temperature, TopK: *topK, TopP: *topP, Seed: *seed}
	if err := checkSampling(*maxTokens, sampler); err != nil {
		return err
	}
	if *streamInterval < 0 {
		return fmt.Errorf("-stream-interval %v: want a duration of 0 or more", *streamInterval)
	}
	if *unroll < 1 {
		return fmt.Errorf("-unroll %d: want a positive number of steps", *unroll)
	}
	if _, _, err := experiments.ParseStepWeights(*stepWeights); err != nil {
		return fmt.Errorf("-step-weights %w", err)
	}
	if err := experiments.CheckStepFuse(*stepFuse); err != nil {
		return fmt.Errorf("-step-fuse %q: %w", *stepFuse, err)
	}
	if err := experiments.CheckGenerateDType(*dtype); err != nil {
		return fmt.Errorf("-%w", err)
	}
	backend, choice, err := xla.NewForDecoding(*backendFlag)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "backend: %s\n", choice)
	m, err := openModel(backend, *modelPath, *random, *activation, int64(*seed))
	if err != nil {
		return err
	}
	var ids []int
	var onToken func(int)
	var streamer *experiments.TextStreamer
	if *promptIDs != "" {
		if ids, err = parseIDs(*promptIDs, m.Cfg.VocabReal); err != nil {
			return fmt.Errorf("-prompt-ids: %w (the model's vocabulary)", err)
		}
		onToken = func(id int) { fmt.Printf(" %d", id) }
	} else {
		tok, err := tokenizer.LoadNeoX(tokenizer.DefaultDataDir())
		if err != nil {
			return err
		}
		if tok.VocabSize() > m.Cfg.VocabReal {
			fmt.Fprintf(os.Stderr, "note: the tokenizer has %d ids but the model only %d; prompts with larger ids are rejected (use -prompt-ids)\n",
				tok.VocabSize(), m.Cfg.VocabReal)
		}
		ids = tok.Encode(*prompt)
		for i, id := range ids {
			if id >= m.Cfg.VocabReal {
				return fmt.Errorf("-prompt: token %d (%q) is tokenizer id %d, outside the model's vocabulary %d", i, tok.Decode([]int{id}), id, m.Cfg.VocabReal)
			}
		}
		streamer = &experiments.TextStreamer{W: os.Stdout, Decode: tok.DecodeBytes}
		fmt.Print(*prompt)
		onToken = func(id int) {
			if !(*stopEOS && id == 0) {
				streamer.Add(id)
			}
		}
	}
	total, active := m.Cfg.ParamCounts()
	fmt.Fprintf(os.Stderr, "model %s: %s, %d layers, d=%d, %d parameters (%d active per token); prompt %d tokens\n",
		m.Path, m.Cfg.Pattern, len(m.Cfg.Blocks()), m.Cfg.Dim, total, active, len(ids))
	st, err := experiments.Generate(backend, m, ids, experiments.GenerateOptions{
		MaxTokens:      *maxTokens,
		Sampler:        sampler,
		StopEOS:        *stopEOS,
		EOS:            0,
		StepWeights:    *stepWeights,
		Unroll:         *unroll,
		StepFuse:       *stepFuse,
		WarmUp:         *warmUp,
		Resident:       *resident,
		StreamInterval: *streamInterval,
		SyncCalls:      *syncCalls,
		DType:          *dtype,
	}, onToken)
	if streamer != nil {
		streamer.Flush()
	}
	fmt.Println()
	if err != nil {
		return err
	}
	compiled := "compilation included"
	if *warmUp {
		compiled = fmt.Sprintf("after a warm-up of %.3fs that compiled the graphs", st.WarmUp.Seconds())
	}
	fmt.Fprintf(os.Stderr, "%d tokens; time to first token %.3fs (prefill of %d tokens); %.2f tokens/s after it (%s)\n",
		len(st.Tokens), st.TimeToFirst.Seconds(), st.PromptTokens, st.TokensPerSecond, compiled)
	fuse := "none"
	if st.StepFuse != "" {
		fuse = st.StepFuse
	}
	loop := "held"
	if st.Resident {
		loop = "resident"
	}
	fmt.Fprintf(os.Stderr, "steps: %s, %s weights, step fuse %s, %d per call, %s\n", st.DType, st.StepLayout, fuse, max(*unroll, 1), loop)
	if backend.Name() == xla.BackendXLA {
		if used := xla.DeviceMemoryUsed(); used > 0 {
			what := "XLA's reservation; BLACKMAMBA_GPU_MEMORY=grow measures the high-water mark"
			if xla.MemoryIsHighWater() {
				what = "high-water mark"
			}
			fmt.Fprintf(os.Stderr, "device memory in use: %.2f GiB (%s)\n", float64(used)/(1<<30), what)
		}
	}
	return nil
}

// stepFusionNames lists bm.StepFusions for a flag's help: quoted, separated by commas and "and"
// before the last, each fusion that needs another followed by it ("wide" (with "ring")).
func stepFusionNames() string {
	names := make([]string, len(bm.StepFusions))
	for i, f := range bm.StepFusions {
		names[i] = strconv.Quote(f)
		if need, ok := bm.StepFusionNeeds[f]; ok {
			names[i] += " (with " + strconv.Quote(need.Fusion) + ")"
		}
	}
	last := len(names) - 1
	return strings.Join(names[:last], ", ") + " and " + names[last]
}
