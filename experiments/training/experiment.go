package training

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
	"blackmamba/bm/data"
	"blackmamba/experiments"
	"blackmamba/experiments/balance"
	"blackmamba/experiments/eval"
	"blackmamba/experiments/results"

	"github.com/gomlx/gomlx/backends"
)

// Architectures are the preset-name suffixes of the comparison, appended to the family name
// ("small" + "-mamba" = "small-mamba"): BlackMamba, dense Mamba and Transformer matched on
// active parameters, Transformer-MoE, and dense Mamba matched on BlackMamba's total parameters.
var Architectures = []string{"", "-mamba", "-transformer", "-transformer-moe", "-mamba-total"}

// AblationRoutings are the extra routing algorithms BlackMamba is trained with in the routing
// ablation (its own Sinkhorn run of the comparison is the reference variant).
var AblationRoutings = []string{bm.RoutingSinkhornVanilla, bm.RoutingArgmax, bm.RoutingSwitch}

// Options configures Run.
type Options struct {
	// Family is the preset size ("tiny", "small", "1.5b", "2.8b").
	Family string
	// Architectures are preset suffixes (default Architectures; NoArchitectures for none);
	// Ablation adds BlackMamba runs with each of Routings (default AblationRoutings).
	Architectures []string
	Ablation      bool
	Routings      []string
	Corpus        *data.Corpus
	SeqLen, Batch int
	// Tokens is the training-token budget of each run; steps = Tokens / (Batch·SeqLen).
	Tokens int64
	LR     float64
	Seed   int64
	// DType overrides the compute dtype ("" keeps the presets').
	DType string
	// Workdir holds one run directory per run, removed first (every run starts fresh) unless
	// Resume: then each run continues from the newest checkpoint in its directory, and a run
	// that had finished is loaded from its final checkpoint, not trained again (its zero-shot
	// tasks and routing analysis still run).
	Workdir                          string
	Resume                           bool
	LogEvery, EvalEvery, EvalBatches int
	// CheckpointEvery is the number of steps between checkpoints of each run (a multiple of
	// LogEvery; 0: only at the end).
	CheckpointEvery int
	// Threshold is the held-out mean loss for FLOPs-to-reach (0: the worst final mean loss
	// among the non-ablation runs, so every one of them reaches it).
	Threshold float64
	// BalanceBatches is the number of held-out batches per domain of the routing analysis of
	// MoE runs.
	BalanceBatches int
	Progress       io.Writer
	// Log receives one line per run (nil: standard error).
	Log io.Writer
	// ZeroShot, when it names tasks, evaluates each trained model on them (experiments/eval).
	ZeroShot ZeroShotOptions
	// AfterRun, if set, receives the result so far after each finished run (e.g. to write it,
	// so that a job stopped by a time limit keeps the runs it finished).
	AfterRun func(*Result) error
	// Devices > 1 trains each run data-parallel on that many devices (Batch is the global batch).
	Devices int
	// Parallel > 1 trains that many runs at the same time on the backend (each with its own
	// model, optimizer and run directory), so that their compilations and small steps overlap;
	// progress lines are prefixed with the run's label. Results are the same as one at a time.
	Parallel int
}

// Size returns the options of a named size: "gpu" (the small family at T=512, B=16, bf16,
// 5M tokens per run; with the step speeds measured on an H200, 33 to 44 TFLOP/s of model
// FLOPs for BlackMamba and dense Mamba, and about a minute of compilation per run, the eight
// runs need roughly a quarter of an hour one after the other: split them over GPUs with
// Architectures, Routings and Ablation) or "cpu-smoke" (the tiny family on a few steps, for CI
// and notebooks on the pure-Go backend).
func Size(name string) (Options, error) {
	switch name {
	case "gpu":
		return Options{Family: "small", SeqLen: 512, Batch: 16, Tokens: 5_000_000, LR: 1e-3, Seed: 1,
			DType: "bfloat16", LogEvery: 10, EvalEvery: 50, EvalBatches: 4, BalanceBatches: 4, Ablation: true}, nil
	case "cpu-smoke":
		return Options{Family: "tiny", SeqLen: 32, Batch: 2, Tokens: 12 * 2 * 32, LR: 3e-3, Seed: 1,
			LogEvery: 3, EvalEvery: 6, EvalBatches: 1, BalanceBatches: 1, Ablation: true}, nil
	}
	return Options{}, fmt.Errorf("training: size %q: want \"gpu\" or \"cpu-smoke\"", name)
}

// Result is the output of Run (written as JSON).
type Result struct {
	Family      string   `json:"family"`
	SeqLen      int      `json:"seq_len"`
	Batch       int      `json:"batch"`
	TokenBudget int64    `json:"token_budget"`
	Steps       int      `json:"steps"`
	Seed        int64    `json:"seed"`
	LR          float64  `json:"lr"`
	DType       string   `json:"dtype,omitempty"`
	Corpus      string   `json:"corpus"`
	Backend     string   `json:"backend"`
	Domains     []string `json:"domains"`
	// Threshold is the held-out mean loss of the FLOPs-to-reach comparison.
	Threshold float64     `json:"threshold"`
	Runs      []RunResult `json:"runs"`
}

// RunResult is one trained model.
type RunResult struct {
	// Label names the run in plots: the config name, plus the routing for ablation runs.
	Label        string `json:"label"`
	Config       string `json:"config"`
	Pattern      string `json:"pattern"`
	Routing      string `json:"routing"`
	MoE          bool   `json:"moe"`
	Ablation     bool   `json:"ablation"`
	ParamsTotal  int64  `json:"params_total"`
	ParamsActive int64  `json:"params_active"`
	// ForwardFLOPsPerToken and TrainFLOPsPerToken at the run's sequence length.
	ForwardFLOPsPerToken float64 `json:"forward_flops_per_token"`
	TrainFLOPsPerToken   float64 `json:"train_flops_per_token"`
	Tokens               int64   `json:"tokens"`
	Steps                int     `json:"steps"`
	WallSeconds          float64 `json:"wall_s"`
	TokensPerSec         float64 `json:"tokens_per_sec"`
	// FinalHeldOut is the last evaluation's loss per domain; FinalHeldOutMean their mean.
	FinalHeldOut     map[string]float64 `json:"final_held_out"`
	FinalHeldOutMean float64            `json:"final_held_out_mean"`
	// FLOPsToThreshold is the training compute at the first evaluation whose mean held-out
	// loss is at or below Result.Threshold; Reached is false if it never was.
	FLOPsToThreshold float64 `json:"flops_to_threshold"`
	Reached          bool    `json:"reached"`
	// Records are the metrics records (with expert counts and balance per MoE layer).
	Records []results.TrainRecord `json:"records"`
	// Balance is the routing analysis of an MoE run on held-out data (experiments/balance).
	// It is the JSON of []balance.Result; BalanceError says why it is missing.
	Balance      json.RawMessage `json:"balance,omitempty"`
	BalanceError string          `json:"balance_error,omitempty"`
	// ZeroShot holds the zero-shot task results of the trained model (Options.ZeroShot);
	// ZeroShotError says why they are missing.
	ZeroShot      []eval.Result `json:"zero_shot,omitempty"`
	ZeroShotError string        `json:"zero_shot_error,omitempty"`
}

// runPlan is one run to do.
type runPlan struct {
	label    string
	cfg      bm.Config
	ablation bool
}

// NoArchitectures as Options.Architectures trains no architecture run (the routing ablation
// alone, e.g. for a job that runs only part of the experiment).
var NoArchitectures = []string{}

func (o Options) plan() ([]runPlan, error) {
	archs := o.Architectures
	if archs == nil {
		archs = Architectures
	}
	routings := o.Routings
	if len(routings) == 0 {
		routings = AblationRoutings
	}
	// Runs at equal total parameters are the slowest: they go last, after the ablation, so that
	// a job stopped by a time limit has the comparisons at equal active parameters.
	var out, last []runPlan
	for _, a := range archs {
		cfg, err := bm.Preset(o.Family + a)
		if err != nil {
			return nil, err
		}
		if o.DType != "" {
			cfg.ComputeDType = o.DType
		}
		if strings.HasSuffix(a, "-total") {
			last = append(last, runPlan{label: cfg.Name, cfg: cfg})
			continue
		}
		out = append(out, runPlan{label: cfg.Name, cfg: cfg})
	}
	if o.Ablation {
		for _, r := range routings {
			if !slices.Contains(AblationRoutings, r) {
				return nil, fmt.Errorf("training: ablation routing %q: want one of %s", r, strings.Join(AblationRoutings, ", "))
			}
			cfg, err := bm.Preset(o.Family)
			if err != nil {
				return nil, err
			}
			if o.DType != "" {
				cfg.ComputeDType = o.DType
			}
			cfg.Routing = r
			out = append(out, runPlan{label: cfg.Name + " " + r, cfg: cfg, ablation: true})
		}
	}
	out = append(out, last...)
	if len(out) == 0 {
		return nil, fmt.Errorf("training: no runs (no architectures and no ablation)")
	}
	return out, nil
}

// Steps returns the number of steps per run of the token budget.
func (o Options) Steps() int { return int(max(1, o.Tokens/int64(o.Batch*o.SeqLen))) }

// Estimate returns the total training FLOPs of all runs, and the seconds they take at
// flopsPerSec plus compileS per run.
func (o Options) Estimate(flopsPerSec, compileS float64) (flops, seconds float64, err error) {
	plans, err := o.plan()
	if err != nil {
		return 0, 0, err
	}
	tokens := float64(o.Steps() * o.Batch * o.SeqLen)
	for _, p := range plans {
		_, trn := p.cfg.FLOPsPerToken(o.SeqLen)
		flops += trn * tokens
	}
	return flops, flops/flopsPerSec + compileS*float64(len(plans)), nil
}

// Run trains every planned architecture on the same data, token budget and seed.
func Run(backend backends.Backend, o Options) (*Result, error) {
	if o.Corpus == nil {
		return nil, fmt.Errorf("training: no corpus")
	}
	if o.Batch < 1 || o.SeqLen < 1 || o.Tokens < 1 {
		return nil, fmt.Errorf("training: batch %d, seq_len %d and tokens %d must be >= 1", o.Batch, o.SeqLen, o.Tokens)
	}
	if o.Workdir == "" {
		return nil, fmt.Errorf("training: Workdir is required")
	}
	logw := o.Log
	if logw == nil {
		logw = os.Stderr
	}
	var logMu, progressMu sync.Mutex
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(logw, format, args...)
	}
	plans, err := o.plan()
	if err != nil {
		return nil, err
	}
	steps := o.Steps()
	res := &Result{Family: o.Family, SeqLen: o.SeqLen, Batch: o.Batch, TokenBudget: o.Tokens, Steps: steps,
		Seed: o.Seed, LR: o.LR, DType: o.DType, Corpus: o.Corpus.Dir, Backend: backend.Name(), Domains: o.Corpus.Domains()}
	// runOne trains plan i and summarises it; progress goes to progress.
	runOne := func(i int, p runPlan, progress io.Writer) (RunResult, error) {
		dir := filepath.Join(o.Workdir, fmt.Sprintf("%02d-%s", i, strings.ReplaceAll(p.label, " ", "-")))
		if !o.Resume {
			if err := os.RemoveAll(dir); err != nil {
				return RunResult{}, err
			}
		}
		logf("training: run %d/%d %s (pattern %s, routing %s), %d steps\n", i+1, len(plans), p.label, p.cfg.Pattern, p.cfg.Routing, steps)
		start := time.Now()
		t, err := Train(backend, Spec{Cfg: p.cfg, Corpus: o.Corpus, SeqLen: o.SeqLen, Batch: o.Batch, Steps: steps,
			LR: o.LR, Warmup: -1, Seed: o.Seed, Dir: dir, Resume: o.Resume, LogEvery: o.LogEvery,
			EvalEvery: o.EvalEvery, CheckpointEvery: o.CheckpointEvery, EvalBatches: o.EvalBatches,
			Progress: progress, Devices: o.Devices})
		if err != nil {
			return RunResult{}, fmt.Errorf("run %s: %w", p.label, err)
		}
		if from := t.Summary.ResumedFrom; from > 0 {
			logf("training: %s: resumed from step %d, at step %d after %.1fs in this process\n", p.label, from, t.Summary.Steps, time.Since(start).Seconds())
		}
		rr, err := RunResultOf(p.cfg, p.label, p.ablation, t)
		if err != nil {
			return RunResult{}, err
		}
		if len(o.ZeroShot.Tasks) > 0 {
			// Zero-shot tasks on the trained model; a failure is recorded in the run.
			rr.ZeroShot, err = o.ZeroShot.run(backend, t.Trainer.Context(), p.cfg, func(r eval.Result, d time.Duration) {
				logf("training: %s: zero-shot %s, %d examples: %s; %.1fs (%.1fs scoring)\n", p.label, r.Task, r.Examples, r.Metrics(), d.Seconds(), r.Seconds)
			})
			if err != nil {
				rr.ZeroShotError = err.Error()
				logf("training: %s: zero-shot evaluation failed: %v\n", p.label, err)
			}
		}
		if rr.MoE && o.BalanceBatches > 0 {
			// Routing analysis of the trained model on held-out data. A failure is recorded
			// in the run instead of discarding the whole experiment.
			// Fresh held-out loaders from the start of each domain: the training loop's own
			// sources stand wherever its last evaluation left them.
			heldOut := experiments.HeldOutBatches(o.Corpus, o.SeqLen, o.Batch)
			br, err := balance.Analyze(backend, t.Trainer.Context(), p.cfg, heldOut, o.BalanceBatches)
			if err == nil {
				rr.Balance, err = json.Marshal(br)
			}
			if err != nil {
				rr.Balance, rr.BalanceError = nil, err.Error()
				logf("training: %s: balance analysis failed: %v\n", p.label, err)
			}
		}
		logf("training: %s: held-out mean %.4f after %d tokens in %.1fs\n", p.label, rr.FinalHeldOutMean, rr.Tokens, rr.WallSeconds)
		return rr, nil
	}

	// o.Parallel workers (one by default) take the plans in order; the result lists the finished
	// runs in plan order, and AfterRun sees it after each run that finishes. Side by side, each
	// run's progress lines carry its label.
	workers := min(max(o.Parallel, 1), len(plans))
	done := make([]*RunResult, len(plans))
	var (
		mu       sync.Mutex
		firstErr error
		next     int
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for {
				mu.Lock()
				if firstErr != nil || next >= len(plans) {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				progress := o.Progress
				if progress != nil && workers > 1 {
					progress = &prefixWriter{w: o.Progress, mu: &progressMu, prefix: "[" + plans[i].label + "] "}
				}
				rr, err := runOne(i, plans[i], progress)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				done[i] = &rr
				res.Runs = res.Runs[:0]
				for _, r := range done {
					if r != nil {
						res.Runs = append(res.Runs, *r)
					}
				}
				res.setDefaultThreshold(o.Threshold)
				if o.AfterRun != nil {
					if err := o.AfterRun(res); err != nil && firstErr == nil {
						firstErr = err
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	res.setDefaultThreshold(o.Threshold)
	return res, nil
}

// setDefaultThreshold sets the FLOPs-to-reach threshold: thr if positive, else the worst final
// mean held-out loss among the non-ablation runs, so that each of them reaches it.
func (r *Result) setDefaultThreshold(thr float64) {
	if thr == 0 {
		for _, run := range r.Runs {
			if !run.Ablation && run.FinalHeldOutMean > thr {
				thr = run.FinalHeldOutMean
			}
		}
	}
	r.SetThreshold(thr)
}

// SetThreshold recomputes every run's FLOPs to reach a mean held-out loss of thr.
func (r *Result) SetThreshold(thr float64) {
	r.Threshold = thr
	for i := range r.Runs {
		r.Runs[i].FLOPsToThreshold, r.Runs[i].Reached = results.FLOPsToReach(withMean(r.Runs[i].Records), thr, MeanDomain)
	}
}

// MeanDomain is the pseudo-domain of the mean held-out loss in plots.
const MeanDomain = "mean"

// withMean returns copies of recs whose HeldOut maps also hold the mean over domains.
func withMean(recs []results.TrainRecord) []results.TrainRecord {
	out := make([]results.TrainRecord, len(recs))
	for i, r := range recs {
		out[i] = r
		if len(r.HeldOut) > 0 {
			h := make(map[string]float64, len(r.HeldOut)+1)
			for k, v := range r.HeldOut {
				h[k] = v
			}
			h[MeanDomain] = meanHeldOut(r.HeldOut)
			out[i].HeldOut = h
		}
	}
	return out
}

// WriteJSON writes r to path (indented).
func (r *Result) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadResult reads a result written by WriteJSON.
func ReadResult(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("training result: %w", err)
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("training result %s: %w", path, err)
	}
	if len(r.Runs) == 0 {
		return nil, fmt.Errorf("training result %s: no runs", path)
	}
	sort.SliceStable(r.Runs, func(i, j int) bool { return !r.Runs[i].Ablation && r.Runs[j].Ablation })
	return &r, nil
}

// RunResultOf summarizes a finished training run of cfg (its metrics file included).
func RunResultOf(cfg bm.Config, label string, ablation bool, t *Trained) (RunResult, error) {
	recs, err := results.ReadTrainLog(t.Summary.Metrics)
	if err != nil {
		return RunResult{}, err
	}
	total, active := cfg.ParamCounts()
	rr := RunResult{Label: label, Config: cfg.Name, Pattern: cfg.Pattern, Routing: cfg.Routing,
		MoE: cfg.NumMoE() > 0, Ablation: ablation, ParamsTotal: total, ParamsActive: active,
		ForwardFLOPsPerToken: t.FLOPsTok[0], TrainFLOPsPerToken: t.FLOPsTok[1], Tokens: t.Tokens,
		Steps: t.Summary.Steps, WallSeconds: t.Wall.Seconds(), FinalHeldOut: t.Summary.HeldOut,
		FinalHeldOutMean: meanHeldOut(t.Summary.HeldOut), Records: recs}
	// Mean throughput over the records (steps only: compilation, evaluation and checkpoints
	// are excluded by the trainer).
	var sum float64
	k := 0
	for _, r := range recs {
		if r.TokensPerSec > 0 {
			sum += r.TokensPerSec
			k++
		}
	}
	if k > 0 {
		rr.TokensPerSec = sum / float64(k)
	}
	return rr, nil
}

// ZeroShotOptions selects the zero-shot tasks run on each trained model.
type ZeroShotOptions struct {
	Tasks   []string     // task names (eval.Known)
	Dir     string       // folder of the task files
	Limit   int          // examples per task (0: all)
	Batch   int          // requests per scoring batch (default 32)
	Encoder eval.Encoder // the tokenizer
}

// run scores each task with the model of ctx; done, if not nil, sees each task's result and the
// time it took with its loading.
func (z ZeroShotOptions) run(backend backends.Backend, ctx *context.Context, cfg bm.Config, done func(eval.Result, time.Duration)) ([]eval.Result, error) {
	if z.Encoder == nil {
		return nil, fmt.Errorf("zero-shot evaluation needs a tokenizer")
	}
	scorer, err := eval.NewModelScorer(backend, ctx, cfg, max(z.Batch, 1))
	if err != nil {
		return nil, err
	}
	var out []eval.Result
	for _, name := range z.Tasks {
		start := time.Now()
		task, err := eval.Load(z.Dir, name, z.Limit)
		if err != nil {
			return out, err
		}
		r, err := eval.Run(task, z.Encoder, scorer, max(z.Batch, 1), nil)
		if err != nil {
			return out, err
		}
		out = append(out, r)
		if done != nil {
			done(r, time.Since(start))
		}
	}
	return out, nil
}

// Merge combines results of the same experiment run in parts (e.g. different -archs on
// different GPUs): the settings (family, sequence length, batch, token budget, steps, seed,
// learning rate, dtype, corpus) must agree; runs are concatenated in order, a later run
// replacing an earlier one of the same label. The threshold is recomputed: thr if positive,
// else the worst final loss of the non-ablation runs.
func Merge(thr float64, parts ...*Result) (*Result, error) {
	runs, err := results.MergeParts("training", parts,
		func(r *Result) string {
			return fmt.Sprintf("family %s, seq_len %d, batch %d, token budget %d, steps %d, seed %d, lr %g, dtype %s, corpus %s",
				r.Family, r.SeqLen, r.Batch, r.TokenBudget, r.Steps, r.Seed, r.LR, r.DType, r.Corpus)
		},
		func(r *Result) []RunResult { return r.Runs },
		func(run RunResult) string { return run.Label })
	if err != nil {
		return nil, err
	}
	first := *parts[0]
	first.Runs = runs
	sort.SliceStable(first.Runs, func(i, j int) bool { return !first.Runs[i].Ablation && first.Runs[j].Ablation })
	first.setDefaultThreshold(thr)
	return &first, nil
}

// prefixWriter writes each line with a prefix, whole lines at a time under a shared mutex, so
// that the progress of runs trained side by side stays readable.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexAny(p.buf, "\n\r")
		if i < 0 {
			return len(b), nil
		}
		line := append([]byte(p.prefix), p.buf[:i+1]...)
		p.buf = p.buf[i+1:]
		p.mu.Lock()
		_, err := p.w.Write(line)
		p.mu.Unlock()
		if err != nil {
			return len(b), err
		}
	}
}
