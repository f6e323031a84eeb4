// Package training runs the architecture comparison: BlackMamba and its baselines (dense
// Mamba and Transformer matched on active parameters, a Transformer-MoE, and a dense Mamba
// matched on total parameters) trained on the same data, token budget and seed, plus the
// routing ablation (BlackMamba trained with other expert-choice algorithms). The result is a
// typed JSON document that PlotAll turns into figures.
package training

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"blackmamba/bm"
	"blackmamba/bm/data"
	"blackmamba/experiments"
	"blackmamba/experiments/train"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// Spec is one training run.
type Spec struct {
	Cfg    bm.Config
	Corpus *data.Corpus
	// SeqLen T and Batch B: batches are [B, T+1] token windows.
	SeqLen, Batch, Steps int
	// LR is the peak learning rate; Warmup the warmup steps (< 0: 1% of Steps).
	LR     float64
	Warmup int
	Seed   int64
	// Dir is the run directory (checkpoints, metrics.jsonl); Resume continues from its newest
	// checkpoint.
	Dir    string
	Resume bool
	// LogEvery, EvalEvery and CheckpointEvery are in steps (EvalEvery and CheckpointEvery
	// multiples of LogEvery; 0 = only at the end). EvalBatches batches of each held-out
	// domain are evaluated.
	LogEvery, EvalEvery, CheckpointEvery, EvalBatches int
	// Progress receives the trainer's progress lines (nil: standard error).
	Progress io.Writer
	// Devices > 1 trains data-parallel on that many devices of the backend (see
	// train.Config.Devices); Batch is the global batch.
	Devices int
	// ShardExperts, with Devices > 1, splits the MoE experts' weights and their optimizer
	// moments over the devices along the expert axis (expert parallelism, bm.IsExpertWeight)
	// instead of replicating them.
	ShardExperts bool
	// Alias is train.Config.Alias ("" for auto).
	Alias string
	// oneGraphInit leaves a fresh run's initialisation to the trainer's one graph (tests).
	oneGraphInit bool
}

// Trained is what Train returns: the summary, the trainer (its context holds the trained
// variables) and the held-out sources, for analyses after training.
type Trained struct {
	Summary *train.Summary
	Trainer *train.Trainer
	HeldOut map[string]train.Batches
	// Wall is this call's wall time, or for a resumed run its wall time across processes.
	Wall     time.Duration
	Tokens   int64
	FLOPsTok [2]float64 // forward, training FLOPs per token
}

// Train trains s.Cfg on s.Corpus. A non-finite loss stops it with the trainer's error.
func Train(backend backends.Backend, s Spec) (*Trained, error) {
	if s.Corpus == nil {
		return nil, fmt.Errorf("training: no corpus")
	}
	if s.Steps < 1 {
		return nil, fmt.Errorf("training: steps %d must be >= 1", s.Steps)
	}
	if !(s.LR > 0) {
		return nil, fmt.Errorf("training: learning rate %g must be > 0", s.LR)
	}
	if err := s.Cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := bm.New(s.Cfg)
	if err != nil {
		return nil, err
	}
	fwd, trn := s.Cfg.FLOPsPerToken(s.SeqLen)
	opt := train.DefaultAdamW(s.LR, s.Steps)
	opt.NoDecay = experiments.NoDecay
	if s.Warmup >= 0 {
		opt.Schedule.Warmup = s.Warmup
	}
	logEvery := s.LogEvery
	if logEvery == 0 {
		logEvery = min(10, s.Steps)
	}
	held := experiments.HeldOutBatches(s.Corpus, s.SeqLen, s.Batch)
	cfgJSON, err := jsonString(s.Cfg)
	if err != nil {
		return nil, err
	}
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, s.Seed)
	paths, _, err := train.ListCheckpoints(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("training: run directory %s: %w", s.Dir, err)
	}
	if len(paths) == 0 && !s.oneGraphInit {
		// A fresh start: the model's variables are initialised a few blocks at a time
		// (bm.InitWeights), the values the trainer's one initialisation graph would give, which
		// for a deep model took minutes on a GPU. A run that resumes reads its
		// checkpoint instead (and one that may not, errs in Run without this work).
		if err := bm.InitWeights(backend, ctx, s.Cfg); err != nil {
			return nil, fmt.Errorf("training %s: %w", s.Cfg.Name, err)
		}
	}
	tcfg := train.Config{
		Batch: s.Batch, SeqLen: s.SeqLen, Optimizer: opt, FLOPsPerToken: trn,
		Dir: s.Dir, Resume: s.Resume, LogEvery: logEvery, CheckpointEvery: s.CheckpointEvery,
		EvalEvery: s.EvalEvery, EvalBatches: s.EvalBatches, HeldOut: held, Progress: s.Progress,
		Meta: map[string]string{"config": cfgJSON}, Devices: s.Devices, Alias: s.Alias,
	}
	if s.ShardExperts {
		tcfg.Sharded = bm.IsExpertWeight
	}
	tr, err := train.New(backend, ctx, experiments.LossFn(m, bm.ForwardOptions{}), tcfg)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sum, err := tr.Run(experiments.Batches(s.Corpus.TrainLoader(s.SeqLen, s.Batch, s.Seed)))
	if err != nil {
		return nil, fmt.Errorf("training %s: %w", s.Cfg.Name, err)
	}
	wall := time.Since(start)
	if sum.ResumedFrom > 0 {
		// The wall time across the run's processes, as the trainer recorded it.
		wall = time.Duration(sum.WallSeconds * float64(time.Second))
	}
	return &Trained{Summary: sum, Trainer: tr, HeldOut: held, Wall: wall,
		Tokens: int64(sum.Steps) * int64(s.Batch) * int64(s.SeqLen), FLOPsTok: [2]float64{fwd, trn}}, nil
}

// meanHeldOut returns the mean of the held-out losses (NaN if none).
func meanHeldOut(h map[string]float64) float64 {
	if len(h) == 0 {
		return math.NaN()
	}
	var s float64
	for _, v := range h {
		s += v
	}
	return s / float64(len(h))
}

func ensureDir(d string) error {
	if d == "" {
		return nil
	}
	return os.MkdirAll(filepath.Clean(d), 0o755)
}

func jsonString(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}
