package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"blackmamba/bm"
	"blackmamba/bm/data"
	"blackmamba/bm/tokenizer"
	"blackmamba/experiments"
	"blackmamba/experiments/training"
	"blackmamba/xla"

	"github.com/gomlx/gomlx/backends"
)

func init() {
	register(&command{
		name:    "train",
		summary: "train a model on the corpus, with checkpoints, resume and held-out evaluation per domain",
		run:     runTrain,
	})
}

// openCorpus opens dir, or the default corpus of the data folder when dir is empty, checking
// it against the tokenizer of the data folder when that file exists.
func openCorpus(dir string) (*data.Corpus, error) {
	dataDir := tokenizer.DefaultDataDir()
	if dir == "" {
		dir = experiments.DefaultCorpusDir(dataDir)
	}
	tok := filepath.Join(dataDir, "tokenizer", "20B_tokenizer.json")
	if _, err := os.Stat(tok); err == nil {
		return data.OpenFor(dir, tok)
	}
	return data.Open(dir)
}

func runTrain(fs *flag.FlagSet, args []string) error {
	backendFlag := xla.AddFlag(fs)
	cfgName := fs.String("config", "tiny", "model preset or JSON config file")
	corpusDir := fs.String("corpus", "", "corpus directory (default data/corpus if built, else data/corpus-tiny)")
	steps := fs.Int("steps", 1000, "optimizer steps in total (including those before a resume)")
	batch := fs.Int("batch", 8, "batch size B")
	seq := fs.Int("seq", 512, "sequence length T")
	lr := fs.Float64("lr", 1e-3, "peak learning rate (warmup, then cosine decay to lr/10)")
	warmup := fs.Int("warmup", -1, "warmup steps (-1: 1% of steps)")
	dtype := fs.String("dtype", "", `compute dtype "float32" or "bfloat16" (default: bfloat16 on a CUDA GPU, where matmuls in bfloat16 run on the tensor cores (weights, scan state and residual stay float32), else the config's)`)
	routing := fs.String("routing", "", "training-time routing of MoE blocks (default: the config's): "+
		bm.RoutingSinkhorn+", "+bm.RoutingSinkhornVanilla+", "+bm.RoutingArgmax+", "+bm.RoutingSwitch)
	dir := fs.String("dir", "", "run directory for checkpoints and metrics.jsonl (required)")
	resume := fs.Bool("resume", false, "continue from the newest checkpoint in -dir")
	logEvery := fs.Int("log-every", 10, "steps per metrics record and progress line")
	evalEvery := fs.Int("eval-every", 0, "steps between held-out evaluations, a multiple of -log-every (0: only at the end)")
	evalBatches := fs.Int("eval-batches", 8, "held-out batches per domain and evaluation")
	ckptEvery := fs.Int("checkpoint-every", 0, "steps between checkpoints, a multiple of -log-every (0: only at the end)")
	seed := fs.Int64("seed", 1, "seed of the initialization and of the data order")
	devices := fs.Int("devices", 1, "train data-parallel on this many devices of the backend (GPUs of one host; -batch is the global batch, split evenly)")
	alias := fs.String("alias", "auto", "write the variables each step updates into their own buffers, so that XLA replays the step's CUDA graphs without updating them (the same results): auto (on one device), on or off")
	shardExperts := fs.Bool("shard-experts", false, "with -devices > 1: split the MoE experts' weights and optimizer moments over the devices along the expert axis (expert parallelism) instead of replicating them; no effect on one device")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *dir == "" {
		return fmt.Errorf("-dir (run directory) is required")
	}
	cfg, err := bm.LoadConfig(*cfgName)
	if err != nil {
		return err
	}
	if *dtype != "" {
		cfg.ComputeDType = *dtype
	}
	if *routing != "" {
		cfg.Routing = *routing
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config %s: %w", *cfgName, err)
	}
	corpus, err := openCorpus(*corpusDir)
	if err != nil {
		return err
	}
	backend, choice, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	if err := checkDevices(backend, *devices, *batch); err != nil {
		return err
	}
	if err := checkShardExperts(cfg, *shardExperts); err != nil {
		return err
	}
	if *dtype == "" && choice.Plugin != nil && choice.Plugin.CUDA {
		cfg.ComputeDType = "bfloat16" // mixed precision by default on the GPU
	}
	total, active := cfg.ParamCounts()
	_, trn := cfg.FLOPsPerToken(*seq)
	fmt.Fprintf(os.Stderr, "backend: %s\nmodel %s (pattern %s, %s compute, routing %s): %.1fM params, %.1fM active, %.3g training FLOPs/token\ncorpus %s, %d steps of %d x %d tokens on %d device(s)%s\n",
		choice, cfg.Name, cfg.Pattern, cfg.ComputeDType, cfg.Routing, float64(total)/1e6, float64(active)/1e6, trn, corpus.Dir, *steps, *batch, *seq, max(1, *devices), expertNote(*shardExperts, *devices))
	t, err := training.Train(backend, training.Spec{Cfg: cfg, Corpus: corpus, SeqLen: *seq, Batch: *batch, Steps: *steps,
		LR: *lr, Warmup: *warmup, Seed: *seed, Dir: *dir, Resume: *resume, LogEvery: *logEvery, EvalEvery: *evalEvery,
		CheckpointEvery: *ckptEvery, EvalBatches: *evalBatches, Devices: *devices, ShardExperts: *shardExperts, Alias: *alias})
	if err != nil {
		return err
	}
	s := t.Summary
	fmt.Printf("trained %s: %d steps (resumed from %d), %d tokens in %.1fs; final training loss %.4f\n",
		cfg.Name, s.Steps, s.ResumedFrom, t.Tokens, t.Wall.Seconds(), s.Loss)
	for _, d := range corpus.Domains() {
		if v, ok := s.HeldOut[d]; ok {
			fmt.Printf("  held-out %-10s %.4f\n", d, v)
		}
	}
	fmt.Printf("metrics: %s\ncheckpoint: %s\n", s.Metrics, s.LastCheckpoint)
	return nil
}

// checkShardExperts refuses -shard-experts for a model without MoE blocks: it has no experts to
// split.
func checkShardExperts(cfg bm.Config, shard bool) error {
	if !shard {
		return nil
	}
	for _, b := range cfg.Blocks() {
		if b.Kind == bm.KindMoE {
			return nil
		}
	}
	return fmt.Errorf("-shard-experts: model %s (pattern %s) has no MoE blocks, so no experts to split", cfg.Name, cfg.Pattern)
}

// expertNote says how the experts are placed when -shard-experts is given.
func expertNote(shard bool, devices int) string {
	switch {
	case !shard:
		return ""
	case devices > 1:
		return fmt.Sprintf(", the experts split over the %d devices", devices)
	}
	return ", the experts on the one device (-shard-experts needs -devices > 1 to split them)"
}

// checkDevices checks the -devices flag against the backend and the global batch -batch.
func checkDevices(backend backends.Backend, devices, batch int) error {
	switch have := backend.NumDevices(); {
	case devices < 1:
		return fmt.Errorf("-devices %d: want >= 1", devices)
	case batch%devices != 0:
		return fmt.Errorf("-devices %d: the global batch %d is not divisible by it (each device takes batch/devices rows)", devices, batch)
	case devices > have:
		return fmt.Errorf("-devices %d: backend %s has %d device(s)", devices, backend.Name(), have)
	}
	return nil
}
