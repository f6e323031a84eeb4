package main

import (
	"flag"
	"fmt"
	"os"

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

func runGenerate(fs *flag.FlagSet, args []string) error {
	modelPath := fs.String("model", "", "model: a directory (config.json + model.safetensors or pytorch_model.bin), a .safetensors checkpoint, or a released pytorch_model.bin with config.json beside it")
	prompt := fs.String("prompt", "", "prompt text (NeoX tokenizer)")
	promptIDs := fs.String("prompt-ids", "", "prompt as comma-separated token ids instead of -prompt (output printed as ids)")
	maxTokens := fs.Int("max-tokens", 128, "tokens to generate at most")
	temperature := fs.Float64("temperature", 0, "sampling temperature; 0 is greedy")
	topK := fs.Int("top-k", 0, "keep the k most likely tokens; 0 keeps all")
	topP := fs.Float64("top-p", 1, "nucleus sampling probability; 1 keeps all")
	seed := fs.Uint64("seed", 1, "random seed of the sampler")
	activation := fs.String("activation", "", "override the expert activation: silu (the paper's SwiGLU) or gelu (the released inference code); empty keeps the config's")
	stopEOS := fs.Bool("stop-eos", true, "stop after the end-of-text token (id 0)")
	backendFlag := xla.AddFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *modelPath == "" {
		return fmt.Errorf("-model is required: a model directory, a .safetensors checkpoint or a released pytorch_model.bin")
	}
	if (*prompt == "") == (*promptIDs == "") {
		return fmt.Errorf("give exactly one of -prompt and -prompt-ids")
	}
	if *maxTokens < 1 {
		return fmt.Errorf("-max-tokens %d must be positive", *maxTokens)
	}
	backend, choice, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "backend: %s\n", choice)
	m, err := experiments.LoadModel(*modelPath, *activation)
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
		*modelPath, m.Cfg.Pattern, len(m.Cfg.Blocks()), m.Cfg.Dim, total, active, len(ids))
	st, err := experiments.Generate(backend, m, ids, experiments.GenerateOptions{
		MaxTokens: *maxTokens,
		Sampler:   bm.SamplerOptions{Temperature: *temperature, TopK: *topK, TopP: *topP, Seed: *seed},
		StopEOS:   *stopEOS,
		EOS:       0,
	}, onToken)
	if streamer != nil {
		streamer.Flush()
	}
	fmt.Println()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%d tokens; time to first token %.3fs (prefill of %d tokens); %.2f tokens/s after it\n",
		len(st.Tokens), st.TimeToFirst.Seconds(), st.PromptTokens, st.TokensPerSecond)
	return nil
}
