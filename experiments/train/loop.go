package train

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"blackmamba/experiments/results"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// MetricsFile is the name of the JSON Lines metrics file (one results.TrainRecord per line)
// in the run directory.
const MetricsFile = "metrics.jsonl"

// Checkpoint metadata keys written by the loop (besides MetaDataSHA256 and Config.Meta).
const (
	MetaStep          = "train.step"
	MetaDataState     = "train.data_state"     // base64 of Batches.State()
	MetaMetricsOffset = "train.metrics_offset" // byte length of the metrics file at this step
	MetaWallSeconds   = "train.wall_s"
	MetaConfig        = "train.config" // JSON of the hyperparameters that must match on resume
)

// Config configures a training run.
type Config struct {
	// Batch and SeqLen give the batch shape [Batch, SeqLen+1] (the global batch over all devices).
	Batch, SeqLen int
	// Devices is the number of devices of the backend that train data-parallel: each gets
	// Batch/Devices rows of every batch and a replica of all variables; XLA partitions the step
	// and all-reduces the gradients, so losses, extras and updates are those of the global batch.
	// 0 or 1 trains on one device (the default device, without a device mesh). Devices > 1 needs
	// a backend with at least that many devices (XLA; the pure-Go backend has one) and a Batch
	// divisible by Devices. Runs may resume with another number of devices.
	Devices int
	// Sharded, with Devices > 1, selects the trainable variables that are split over the devices
	// along their first axis instead of replicated, together with their AdamW moments (expert
	// parallelism: bm.IsExpertWeight selects the MoE experts' weights [E, …], so each device
	// holds and updates E/Devices experts). XLA's partitioner then moves whatever the step needs
	// between the devices. Each selected variable's first dimension must be divisible by Devices,
	// and at least one variable must be selected. Checkpoints still hold whole variables. On one
	// device it has no effect.
	Sharded func(v *context.Variable) bool `json:"-"`
	// Alias says whether the training step writes the variables it updates (weights, AdamW
	// moments, step counter) into their own buffers (bm.AliasUpdatedVariables): "on", "off", or
	// "auto" (the default, also ""), which is on for one device and off for several, where it
	// has not been measured yet. It changes no result. On the XLA backend the updated
	// variables keep their buffers, so XLA replays the step's recorded CUDA graphs instead of
	// updating them at every call (25-45 ms per 1.5B step on an H200) and allocates no second
	// copy of them (the step's peak memory, set by its activations, did not change). The
	// pure-Go backend ignores it.
	Alias string
	// Optimizer holds AdamW and its schedule; Optimizer.Schedule.Total is the run's length
	// in steps.
	Optimizer AdamW
	// FLOPsPerToken is the model's training FLOPs per token (forward + backward), used for the
	// cumulative FLOPs of each record.
	FLOPsPerToken float64
	// Dir is the run directory: checkpoints and the metrics file.
	Dir string
	// Resume continues from the newest usable checkpoint in Dir. Without it, a Dir that holds
	// checkpoints is an error (to never mix two runs).
	Resume bool
	// LogEvery is the number of steps per metrics record and progress line (default 10).
	LogEvery int
	// CheckpointEvery is the number of steps between checkpoints (a multiple of LogEvery;
	// 0 = only at the end). A checkpoint is always written at the last step.
	CheckpointEvery int
	// KeepCheckpoints is how many checkpoints to keep (default 2, so a damaged newest file
	// leaves a usable previous one).
	KeepCheckpoints int
	// EvalEvery is the number of steps between held-out evaluations (a multiple of LogEvery;
	// 0 = only at the end). EvalBatches batches (default 8) of each HeldOut source are
	// evaluated, always the same ones: each source is rewound to its initial state first.
	EvalEvery, EvalBatches int
	HeldOut                map[string]Batches `json:"-"`
	// Eval is an optional extra evaluation hook, called on evaluation steps; its values are
	// merged into the record's held-out map.
	Eval func(step int) (map[string]float64, error) `json:"-"`
	// Progress receives one progress line per record (default os.Stderr). On a terminal the
	// line is redrawn in place.
	Progress io.Writer `json:"-"`
	// Meta is copied into every checkpoint's metadata (e.g. the model config as JSON).
	Meta map[string]string `json:"-"`
	// OnRecord, if set, is called after each record is written; an error stops the run.
	OnRecord func(results.TrainRecord) error `json:"-"`
}

func (c Config) withDefaults() Config {
	if c.LogEvery == 0 {
		c.LogEvery = 10
	}
	if c.KeepCheckpoints == 0 {
		c.KeepCheckpoints = 2
	}
	if c.EvalBatches == 0 {
		c.EvalBatches = 8
	}
	if c.Progress == nil {
		c.Progress = os.Stderr
	}
	return c
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if err := c.Optimizer.Validate(); err != nil {
		return err
	}
	bad := func(format string, args ...any) error { return fmt.Errorf("train config: "+format, args...) }
	switch {
	case c.Batch < 1 || c.SeqLen < 1:
		return bad("batch %d and seq_len %d must be >= 1", c.Batch, c.SeqLen)
	case c.Devices < 0:
		return bad("devices %d must be >= 0 (0 or 1: one device)", c.Devices)
	case c.Alias != "" && c.Alias != "auto" && c.Alias != "on" && c.Alias != "off":
		return bad("alias %q: want auto, on or off", c.Alias)
	case c.Devices > 1 && c.Batch%c.Devices != 0:
		return bad("batch %d is not divisible by devices %d (each device takes batch/devices rows)", c.Batch, c.Devices)
	case c.FLOPsPerToken < 0:
		return bad("flops per token %g must be >= 0", c.FLOPsPerToken)
	case c.LogEvery < 1:
		return bad("log_every %d must be >= 1", c.LogEvery)
	case c.CheckpointEvery < 0 || c.CheckpointEvery%c.LogEvery != 0:
		return bad("checkpoint_every %d must be a non-negative multiple of log_every %d", c.CheckpointEvery, c.LogEvery)
	case c.EvalEvery < 0 || c.EvalEvery%c.LogEvery != 0:
		return bad("eval_every %d must be a non-negative multiple of log_every %d", c.EvalEvery, c.LogEvery)
	case c.KeepCheckpoints < 1:
		return bad("keep_checkpoints %d must be >= 1", c.KeepCheckpoints)
	case c.EvalBatches < 1:
		return bad("eval_batches %d must be >= 1", c.EvalBatches)
	}
	return nil
}

// fingerprint is the JSON of the hyperparameters that define the run; resuming with different
// ones is an error.
func (c Config) fingerprint() string {
	b, _ := json.Marshal(struct {
		Batch, SeqLen int
		Optimizer     AdamW
		FLOPsPerToken float64
	}{c.Batch, c.SeqLen, c.Optimizer, c.FLOPsPerToken})
	return string(b)
}

// Summary is what Run returns.
type Summary struct {
	Steps       int // steps done in total (including before a resume)
	ResumedFrom int // step of the checkpoint resumed from (0 = fresh start)
	// WallSeconds is the run's wall time across resumes: the time recorded in the checkpoint
	// resumed from plus this call's, up to its last record.
	WallSeconds    float64
	Loss           float64            // last record's training loss
	HeldOut        map[string]float64 // last evaluation
	LastCheckpoint string
	Metrics        string // metrics file path
}

// fromRecords sets the summary of a run resumed at step from its metrics file (already
// truncated to that step): the last record's loss, the last held-out evaluation, and wall, the
// wall time recorded in the checkpoint.
func (s *Summary) fromRecords(step int, wall float64) error {
	recs, err := results.ReadTrainLog(s.Metrics)
	if err != nil {
		return err
	}
	s.Steps, s.WallSeconds = step, wall
	if n := len(recs); n > 0 {
		if recs[n-1].Step != step {
			return fmt.Errorf("metrics file %s ends at step %d, the checkpoint is at step %d", s.Metrics, recs[n-1].Step, step)
		}
		s.Loss = recs[n-1].Loss
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if len(recs[i].HeldOut) > 0 {
			s.HeldOut = recs[i].HeldOut
			break
		}
	}
	return nil
}

// window accumulates step results between records.
type window struct {
	n           int
	loss, gnorm float64
	extras      map[string]float64
	counts      map[string][]float64
	lr          float64
	elapsed     time.Duration
	timed       int // steps counted in elapsed
}

// add accumulates a step; timed is false for a step whose duration includes compilation.
func (w *window) add(r StepResult, d time.Duration, timed bool) {
	w.n++
	if timed {
		w.timed++
		w.elapsed += d
	}
	w.loss += r.Loss
	w.gnorm += r.GradNorm
	w.lr = r.LR
	for k, v := range r.Extras {
		if w.extras == nil {
			w.extras = map[string]float64{}
		}
		w.extras[k] += v
	}
	for k, v := range r.Counts {
		if w.counts == nil {
			w.counts = map[string][]float64{}
		}
		acc := w.counts[k]
		if acc == nil {
			acc = make([]float64, len(v))
			w.counts[k] = acc
		}
		for i := range v {
			acc[i] += v[i]
		}
	}
}

// Run trains until Optimizer.Schedule.Total steps, from scratch or (with Config.Resume) from
// the newest usable checkpoint in Config.Dir, which restores all variables (model, optimizer
// moments, step), the position of data and the metrics file (truncated back to the
// checkpoint's step). A non-finite loss or gradient norm stops the run with an error naming
// the step and the last good checkpoint.
func (t *Trainer) Run(data Batches) (*Summary, error) {
	cfg := t.cfg
	if cfg.Dir == "" {
		return nil, fmt.Errorf("train.Run: Config.Dir (run directory) is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("train.Run: %w", err)
	}
	start := time.Now()
	if err := t.build(); err != nil {
		return nil, err
	}
	sum := &Summary{Metrics: filepath.Join(cfg.Dir, MetricsFile)}

	removed, err := RemoveUnfinished(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("train.Run: removing unfinished checkpoint files: %w", err)
	}
	for _, p := range removed {
		fmt.Fprintf(cfg.Progress, "removed %s, a checkpoint write that did not finish\n", p)
	}

	// Resume or start fresh.
	step, metricsOffset, wall0 := 0, int64(0), 0.0
	paths, _, err := ListCheckpoints(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("train.Run: listing checkpoints: %w", err)
	}
	if len(paths) > 0 && !cfg.Resume {
		return nil, fmt.Errorf("train.Run: run directory %s already holds checkpoints (newest %s): "+
			"resume it or use another directory", cfg.Dir, filepath.Base(paths[0]))
	}
	if len(paths) > 0 {
		var problems []string
		for _, p := range paths {
			ts, meta, err := LoadCheckpoint(p)
			if err == nil {
				step, metricsOffset, wall0, err = t.restore(p, ts, meta, data)
			}
			if err != nil {
				problems = append(problems, err.Error())
				fmt.Fprintf(cfg.Progress, "warning: %v; trying the previous checkpoint\n", err)
				continue
			}
			sum.ResumedFrom, sum.LastCheckpoint = step, p
			fmt.Fprintf(cfg.Progress, "resuming from %s (step %d)\n", p, step)
			break
		}
		if sum.LastCheckpoint == "" {
			return nil, fmt.Errorf("train.Run: no usable checkpoint in %s: %s", cfg.Dir, strings.Join(problems, "; "))
		}
	} else if err := t.initialize(); err != nil {
		return nil, err
	}

	// Metrics file: truncated to the checkpoint's step (or emptied on a fresh start).
	mf, err := os.OpenFile(sum.Metrics, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("train.Run: %w", err)
	}
	defer mf.Close()
	if st, err := mf.Stat(); err != nil {
		return nil, fmt.Errorf("train.Run: %w", err)
	} else if st.Size() < metricsOffset {
		return nil, fmt.Errorf("train.Run: metrics file %s has %d bytes, shorter than the %d recorded in checkpoint %s",
			sum.Metrics, st.Size(), metricsOffset, sum.LastCheckpoint)
	}
	if err := mf.Truncate(metricsOffset); err != nil {
		return nil, fmt.Errorf("train.Run: truncating %s: %w", sum.Metrics, err)
	}
	if _, err := mf.Seek(metricsOffset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("train.Run: %w", err)
	}
	if sum.ResumedFrom > 0 {
		// The summary starts from the records kept: a run resumed from its final checkpoint
		// does no step and reports what it had reached.
		if err := sum.fromRecords(step, wall0); err != nil {
			return nil, fmt.Errorf("train.Run: resuming from %s: %w", sum.LastCheckpoint, err)
		}
	}

	// Held-out sources are rewound to their initial state before each evaluation.
	heldNames := make([]string, 0, len(cfg.HeldOut))
	heldStates := map[string][]byte{}
	for n, b := range cfg.HeldOut {
		heldNames = append(heldNames, n)
		heldStates[n] = b.State()
	}
	sort.Strings(heldNames)
	evaluate := func(step int) (map[string]float64, error) {
		out := map[string]float64{}
		for _, n := range heldNames {
			b := cfg.HeldOut[n]
			if err := b.Restore(heldStates[n]); err != nil {
				return nil, fmt.Errorf("held-out %q: rewinding: %w", n, err)
			}
			l, err := t.EvalLoss(b, cfg.EvalBatches)
			if err != nil {
				return nil, fmt.Errorf("held-out %q at step %d: %w", n, step, err)
			}
			out[n] = l
		}
		if cfg.Eval != nil {
			extra, err := cfg.Eval(step)
			if err != nil {
				return nil, fmt.Errorf("evaluation hook at step %d: %w", step, err)
			}
			for k, v := range extra {
				out[k] = v
			}
		}
		return out, nil
	}

	total := cfg.Optimizer.Schedule.Total
	tokensPerStep := int64(cfg.Batch) * int64(cfg.SeqLen)
	isTerm := isTerminal(cfg.Progress)
	var w window
	var stepTimeEMA float64
	compiled := false
	lastCkptDesc := func() string {
		if sum.LastCheckpoint == "" {
			return "none written yet"
		}
		return sum.LastCheckpoint
	}
	for step < total {
		tokens, err := data.Next()
		if err != nil {
			return sum, fmt.Errorf("train.Run: reading batch for step %d: %w", step+1, err)
		}
		t0 := time.Now()
		r, err := t.Step(tokens)
		d := time.Since(t0)
		if err != nil {
			return sum, fmt.Errorf("train.Run: step %d: %w", step+1, err)
		}
		step++
		if bad := nonFinite(r.Loss, r.GradNorm); bad != "" {
			return sum, fmt.Errorf("train.Run: step %d: %s (loss %v, grad norm %v); last good checkpoint: %s",
				step, bad, r.Loss, r.GradNorm, lastCkptDesc())
		}
		// The first step of a process compiles the train step: not counted in throughput.
		timed := compiled
		compiled = true
		w.add(r, d, timed)
		if timed {
			if stepTimeEMA == 0 {
				stepTimeEMA = d.Seconds()
			} else {
				stepTimeEMA = 0.9*stepTimeEMA + 0.1*d.Seconds()
			}
		}
		last := step == total
		if step%cfg.LogEvery != 0 && !last {
			continue
		}
		rec := results.TrainRecord{
			Step:         step,
			Tokens:       int64(step) * tokensPerStep,
			FLOPs:        float64(int64(step)*tokensPerStep) * cfg.FLOPsPerToken,
			Loss:         w.loss / float64(w.n),
			LR:           w.lr,
			GradNorm:     w.gnorm / float64(w.n),
			ExpertCounts: w.counts,
		}
		if w.elapsed > 0 {
			rec.TokensPerSec = float64(int64(w.timed)*tokensPerStep) / w.elapsed.Seconds()
		}
		for k, v := range w.extras {
			if rec.Extras == nil {
				rec.Extras = map[string]float64{}
			}
			rec.Extras[k] = v / float64(w.n)
		}
		for k, c := range w.counts {
			if rec.BalanceCV == nil {
				rec.BalanceCV = map[string]float64{}
			}
			if cv := results.CoefficientOfVariation(c); !math.IsNaN(cv) {
				rec.BalanceCV[k] = cv
			}
		}
		w = window{}
		if last || (cfg.EvalEvery > 0 && step%cfg.EvalEvery == 0) {
			if rec.HeldOut, err = evaluate(step); err != nil {
				return sum, fmt.Errorf("train.Run: %w", err)
			}
			sum.HeldOut = rec.HeldOut
		}
		rec.WallSeconds = wall0 + time.Since(start).Seconds()
		line, err := json.Marshal(rec)
		if err != nil {
			return sum, fmt.Errorf("train.Run: encoding record of step %d: %w", step, err)
		}
		if err := writeAll(mf, append(line, '\n')); err != nil {
			return sum, fmt.Errorf("train.Run: writing %s: %w", sum.Metrics, err)
		}
		metricsOffset += int64(len(line) + 1)
		sum.Steps, sum.Loss, sum.WallSeconds = step, rec.Loss, rec.WallSeconds
		printProgress(cfg.Progress, isTerm, rec, total, stepTimeEMA)

		if last || (cfg.CheckpointEvery > 0 && step%cfg.CheckpointEvery == 0) {
			if err := mf.Sync(); err != nil {
				return sum, fmt.Errorf("train.Run: syncing %s: %w", sum.Metrics, err)
			}
			p, err := t.saveCheckpoint(step, data, metricsOffset, wall0+time.Since(start).Seconds())
			if err != nil {
				return sum, fmt.Errorf("train.Run: step %d: %w", step, err)
			}
			sum.LastCheckpoint = p
		}
		if cfg.OnRecord != nil {
			if err := cfg.OnRecord(rec); err != nil {
				return sum, fmt.Errorf("train.Run: step %d: %w", step, err)
			}
		}
	}
	if isTerm {
		fmt.Fprintln(cfg.Progress)
	}
	return sum, nil
}

func nonFinite(loss, gnorm float64) string {
	switch {
	case math.IsNaN(loss) || math.IsInf(loss, 0):
		return "training loss is not finite"
	case math.IsNaN(gnorm) || math.IsInf(gnorm, 0):
		return "gradient norm is not finite"
	}
	return ""
}

// saveCheckpoint writes all context variables and the loop state, then removes checkpoints
// beyond KeepCheckpoints.
func (t *Trainer) saveCheckpoint(step int, data Batches, metricsOffset int64, wall float64) (string, error) {
	ts := map[string]*tensors.Tensor{}
	for v := range t.ctx.IterVariables() {
		val, err := v.Value()
		if err != nil {
			return "", fmt.Errorf("checkpoint: variable %s: %w", v.ScopeAndName(), err)
		}
		ts[v.ScopeAndName()] = val
	}
	meta := map[string]string{}
	for k, v := range t.cfg.Meta {
		meta[k] = v
	}
	meta[MetaStep] = strconv.Itoa(step)
	meta[MetaDataState] = base64.StdEncoding.EncodeToString(data.State())
	meta[MetaMetricsOffset] = strconv.FormatInt(metricsOffset, 10)
	meta[MetaWallSeconds] = strconv.FormatFloat(wall, 'g', -1, 64)
	meta[MetaConfig] = t.cfg.fingerprint()
	p := checkpointPath(t.cfg.Dir, step)
	if err := SaveCheckpoint(p, ts, meta); err != nil {
		return "", err
	}
	paths, _, err := ListCheckpoints(t.cfg.Dir)
	if err != nil {
		return p, err
	}
	for i, old := range paths {
		if i >= t.cfg.KeepCheckpoints && old != p {
			if err := os.Remove(old); err != nil {
				return p, fmt.Errorf("removing old checkpoint: %w", err)
			}
		}
	}
	return p, nil
}

// restore sets every context variable from ts and the data position from meta. The context
// must hold exactly the variables of the checkpoint, with the same shapes and dtypes.
func (t *Trainer) restore(path string, ts map[string]*tensors.Tensor, meta map[string]string, data Batches) (
	step int, metricsOffset int64, wall float64, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("checkpoint %s: %s", path, fmt.Sprintf(format, args...))
	}
	if got, want := meta[MetaConfig], t.cfg.fingerprint(); got != want {
		return 0, 0, 0, bad("hyperparameters differ from this run's:\n  checkpoint: %s\n  this run:   %s", got, want)
	}
	if step, err = strconv.Atoi(meta[MetaStep]); err != nil {
		return 0, 0, 0, bad("metadata %s=%q: %v", MetaStep, meta[MetaStep], err)
	}
	if metricsOffset, err = strconv.ParseInt(meta[MetaMetricsOffset], 10, 64); err != nil {
		return 0, 0, 0, bad("metadata %s=%q: %v", MetaMetricsOffset, meta[MetaMetricsOffset], err)
	}
	if wall, err = strconv.ParseFloat(meta[MetaWallSeconds], 64); err != nil {
		return 0, 0, 0, bad("metadata %s=%q: %v", MetaWallSeconds, meta[MetaWallSeconds], err)
	}
	state, err := base64.StdEncoding.DecodeString(meta[MetaDataState])
	if err != nil {
		return 0, 0, 0, bad("metadata %s: %v", MetaDataState, err)
	}
	seen := map[string]bool{}
	for v := range t.ctx.IterVariables() {
		name := v.ScopeAndName()
		x, ok := ts[name]
		if !ok {
			return 0, 0, 0, bad("variable %s (shape %s) is missing", name, v.Shape())
		}
		if !x.Shape().Equal(v.Shape()) {
			return 0, 0, 0, bad("variable %s has shape %s, the model wants %s", name, x.Shape(), v.Shape())
		}
		seen[name] = true
	}
	for name := range ts {
		if !seen[name] {
			return 0, 0, 0, bad("tensor %s is not a variable of this model", name)
		}
	}
	for v := range t.ctx.IterVariables() {
		if err := v.SetValue(ts[v.ScopeAndName()]); err != nil {
			return 0, 0, 0, bad("setting %s: %v", v.ScopeAndName(), err)
		}
	}
	sv := t.ctx.GetVariableByScopeAndName(OptimizerScope, StepName)
	if sv == nil {
		return 0, 0, 0, bad("no optimizer step variable %s/%s", OptimizerScope, StepName)
	}
	if got := tensors.ToScalar[int64](sv.MustValue()); got != int64(step) {
		return 0, 0, 0, bad("optimizer step %d differs from metadata %s=%d", got, MetaStep, step)
	}
	if err := data.Restore(state); err != nil {
		return 0, 0, 0, bad("restoring the data position: %v", err)
	}
	return step, metricsOffset, wall, nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// printProgress writes the progress line of a record: redrawn in place on a terminal, one
// line per record otherwise.
func printProgress(w io.Writer, term bool, r results.TrainRecord, total int, stepSeconds float64) {
	var b strings.Builder
	speed := humanCount(r.TokensPerSec) + " tok/s"
	if r.TokensPerSec == 0 {
		speed = "tok/s after the first step" // the first step includes compilation and is not timed
	}
	fmt.Fprintf(&b, "step %d/%d  loss %.4f  lr %.3g  gnorm %.3g  %s  ETA %s",
		r.Step, total, r.Loss, r.LR, r.GradNorm, speed,
		time.Duration(float64(total-r.Step)*stepSeconds*float64(time.Second)).Round(time.Second))
	if len(r.HeldOut) > 0 {
		names := make([]string, 0, len(r.HeldOut))
		for n := range r.HeldOut {
			names = append(names, n)
		}
		sort.Strings(names)
		b.WriteString("  held-out")
		for _, n := range names {
			fmt.Fprintf(&b, " %s=%.4f", n, r.HeldOut[n])
		}
	}
	if term {
		end := ""
		if len(r.HeldOut) > 0 {
			end = "\n" // keep evaluation lines on screen
		}
		fmt.Fprintf(w, "\r\033[K%s%s", b.String(), end)
	} else {
		fmt.Fprintln(w, b.String())
	}
}

func humanCount(x float64) string {
	switch {
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}
