// Package latency measures autoregressive generation time of the BlackMamba architecture and its
// baselines (dense Mamba, Transformer, Transformer-MoE): batch 1, a one-token prompt, greedy
// decoding kept on the device, random weights (timing does not depend on their values), matmul
// operands in bfloat16. One pass to the longest length gives the cumulative time to generate
// every shorter length L, and the per-token latency just before L.
package latency

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/bm"
	"blackmamba/xla"
)

// Families maps a family name to its architecture presets, in plotting order: BlackMamba,
// dense Mamba, Transformer, Transformer-MoE. The baselines are matched to BlackMamba on ACTIVE
// parameters (the "-mamba-total" presets match total parameters instead and can be added with
// Options.Archs).
var Families = map[string][]string{
	"1.5b": {"1.5b", "1.5b-mamba", "1.5b-transformer", "1.5b-transformer-moe"},
	"2.8b": {"2.8b", "2.8b-mamba", "2.8b-transformer", "2.8b-transformer-moe"},
	"tiny": {"tiny", "tiny-mamba", "tiny-transformer", "tiny-transformer-moe"},
}

// Options configure Run. Zero values take the defaults noted.
type Options struct {
	Family string   // key of Families; default "1.5b"
	Archs  []string // presets to time; default Families[Family]
	MaxLen int      // longest generation, in tokens; default 16384 (128 for the tiny family)
	MinLen int      // shortest length reported; lengths are MinLen·2^k <= MaxLen; default 128 (8 for tiny)
	Reps   int      // timed passes per architecture; default 3 (1 for the tiny family)
	Seed   int64    // weight initialisation seed; default 1
	// Unroll is the number of greedy steps per executable call (bm.GreedyDecoder.Unroll);
	// 0 or 1: one call per token. The checkpoints of the timing are multiples of it where it
	// divides them; elsewhere the pass runs single steps up to the checkpoint.
	Unroll int
	// StepRows is bm.Config.StepRows for every architecture: the decode step's weight
	// products run on that many rows (the token's row and zero rows); 0: not padded.
	StepRows int
	// StepWeights is the layout of the weights the decode steps read (bm.SetStepLayout);
	// "" is bm.StepInOut.
	StepWeights bm.StepLayout
	// StepFuse is bm.Config.StepFuse for every architecture (the folded layout's batch-1 step
	// rearrangements); "": none.
	StepFuse string
	// Resident runs the steps through bm.GreedyDecoder.GenerateResident (every input of a call
	// kept on the device and donated, on XLA written over by the call's outputs) from one
	// checkpoint to the next, instead of StepsGreedy with each token kept as its own tensor.
	Resident bool
	// SyncCalls is bm.GreedyDecoder.SyncCalls for the resident steps: each call waits for the
	// device before the next, instead of being launched ahead where the backend has a
	// bm.Pipeline (XLA).
	SyncCalls bool
	// ChooseSteps, when set, picks each architecture's step layout and bm.Config.StepFuse once
	// its weights are made and cast, from the bytes its step copies would take
	// (bm.StepWeightBytes); StepWeights and StepFuse are then ignored. The command's "auto"
	// settings use it (folded with "residual" on an NVIDIA GPU).
	ChooseSteps func(backend backends.Backend, copyBytes int64) (bm.StepLayout, string, error)
	Log         io.Writer
	// AfterArch, if set, receives the result so far after each architecture (e.g. to save it,
	// so that a run stopped by a time limit keeps the architectures it finished), and after
	// every timed pass with the current architecture's statistics over the passes done so far
	// (its RepsDone below Reps until the last pass), so that a long sweep stopped before its
	// last pass keeps the passes it finished.
	AfterArch func(*Result) error
}

// Stat is a median with the spread over repetitions.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Point holds the times at one generation length L.
type Point struct {
	L int `json:"L"`
	// TotalMS: milliseconds to generate L tokens from the one-token prompt (prefill included).
	TotalMS Stat `json:"total_ms"`
	// PerTokenMS: milliseconds per token over the Window steps that end at token L.
	PerTokenMS Stat `json:"per_token_ms"`
	Window     int  `json:"window"`
}

// Arch is the measurement of one architecture.
type Arch struct {
	Config       string `json:"config"`
	Pattern      string `json:"pattern"`
	Blocks       int    `json:"blocks"`
	Dim          int    `json:"dim"`
	TotalParams  int64  `json:"total_params"`
	ActiveParams int64  `json:"active_params"`
	ComputeDType string `json:"compute_dtype"`
	Unroll       int    `json:"unroll,omitempty"`    // greedy steps per executable call (absent: 1)
	StepRows     int    `json:"step_rows,omitempty"` // rows of the step's weight products (bm.Config.StepRows; absent: not padded)
	// StepTransposed: the steps read the weights' transposed copies (bm.TransposeStepWeights);
	// StepFolded: those of the blocks' first products carry the norm gains (bm.FoldStepWeights,
	// StepTransposed set too).
	StepTransposed bool   `json:"step_transposed,omitempty"`
	StepFolded     bool   `json:"step_folded,omitempty"`
	StepFuse       string `json:"step_fuse,omitempty"` // bm.Config.StepFuse (absent: none)
	Resident       bool   `json:"resident,omitempty"`  // the steps ran resident (Options.Resident)
	// PipelinedCalls counts the resident calls launched ahead of the device (bm.Pipeline) over
	// the warm-up and every pass; absent: none (SyncCalls, no pipeline for the backend, or
	// results written before pipelines existed).
	PipelinedCalls int     `json:"pipelined_calls,omitempty"`
	CompileS       float64 `json:"compile_s"` // warm-up: weight initialisation + compiling every graph the sweep runs
	// WeightsS is the part of CompileS spent making the random weights (initialisation, the cast
	// to bfloat16, the transposed copies); absent in results written before it was recorded.
	WeightsS     float64 `json:"weights_s,omitempty"`
	FirstTokenMS Stat    `json:"first_token_ms"`
	Points       []Point `json:"points"`
	// TokensRepeat reports whether every repetition produced the same tokens at the checkpoints.
	TokensRepeat bool `json:"tokens_repeat"`
	// TimedCompiles counts the graphs built during the timed passes, which the warm-up should
	// have built (bm.Decoder.GraphsBuilt): when not 0 the times include compilation.
	TimedCompiles int `json:"timed_compiles,omitempty"`
	// RepsDone is the number of timed passes the statistics come from: Result.Reps once the
	// architecture is finished, fewer in a result saved while it was still running (absent in
	// results written before it was recorded: Result.Reps).
	RepsDone int `json:"reps_done,omitempty"`
	// Reps is the number of timed passes asked of this architecture when it differs from
	// Result.Reps: set by Merge on results timed with different passes (0: Result.Reps).
	Reps int `json:"reps,omitempty"`
	// PeakMemoryBytes is the process's device-memory high-water mark after this architecture
	// (architectures run in order in one process, so it is cumulative); -1 when not measured.
	PeakMemoryBytes int64 `json:"peak_memory_bytes"`
}

// Result is the output of Run, written as JSON.
type Result struct {
	Family   string `json:"family"`
	Backend  string `json:"backend"`
	Matching string `json:"matching"`
	Batch    int    `json:"batch"`
	Prompt   int    `json:"prompt_tokens"`
	MaxLen   int    `json:"max_len"`
	Reps     int    `json:"reps"` // timed passes per architecture (after a Merge, the most of any; see Arch.Reps)
	Method   string `json:"method"`
	Created  string `json:"created"`
	Archs    []Arch `json:"archs"`
}

// Lengths returns the reported generation lengths minLen·2^k <= maxLen (and maxLen itself when
// it is not of that form).
func Lengths(minLen, maxLen int) []int {
	var ls []int
	for l := minLen; l <= maxLen; l *= 2 {
		ls = append(ls, l)
	}
	if len(ls) == 0 || ls[len(ls)-1] != maxLen {
		ls = append(ls, maxLen)
	}
	return ls
}

// Window returns the number of steps before length L over which the per-token latency is
// averaged: min(128, L/4), at least 1.
func Window(L int) int { return max(1, min(128, L/4)) }

func (o *Options) defaults() error {
	if o.StepWeights == "" {
		o.StepWeights = bm.StepInOut
	}
	if o.Family == "" {
		o.Family = "1.5b"
	}
	if _, ok := Families[o.Family]; !ok {
		return fmt.Errorf("latency: unknown family %q (known: 1.5b, 2.8b, tiny)", o.Family)
	}
	if len(o.Archs) == 0 {
		o.Archs = Families[o.Family]
	}
	// The result is labelled with the family and merged by it: an architecture of another
	// family would be filed under the wrong sizes.
	for _, a := range o.Archs {
		if a != o.Family && !strings.HasPrefix(a, o.Family+"-") {
			return fmt.Errorf("latency: architecture %q is not of family %q (its presets are %s and %s-…); set the family to the architecture's", a, o.Family, o.Family, o.Family)
		}
	}
	tiny := o.Family == "tiny"
	if o.MaxLen == 0 {
		o.MaxLen = 16384
		if tiny {
			o.MaxLen = 128
		}
	}
	if o.MinLen == 0 {
		o.MinLen = 128
		if tiny {
			o.MinLen = 8
		}
	}
	if o.Reps == 0 {
		o.Reps = 3
		if tiny {
			o.Reps = 1
		}
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.MaxLen < 2 || o.MinLen < 1 || o.Reps < 1 {
		return fmt.Errorf("latency: max-len (%d) must be >= 2, min-len (%d) and reps (%d) >= 1", o.MaxLen, o.MinLen, o.Reps)
	}
	if o.Unroll < 0 {
		return fmt.Errorf("latency: unroll (%d) must be >= 0", o.Unroll)
	}
	if o.StepRows < 0 || o.StepRows > bm.MaxStepRows {
		return fmt.Errorf("latency: step rows (%d) must be between 0 and %d", o.StepRows, bm.MaxStepRows)
	}
	if err := bm.CheckStepFuse(o.StepFuse); err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	if o.StepFuse != "" && o.StepWeights != bm.StepFolded && o.ChooseSteps == nil {
		return fmt.Errorf("latency: step fuse %q applies to the folded step weights only, not %s", o.StepFuse, o.StepWeights)
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return nil
}

// Run times every architecture of opts on backend and returns the result.
func Run(backend backends.Backend, opts Options) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	res := &Result{
		Family: opts.Family, Backend: backend.Name(), Batch: 1, Prompt: 1, MaxLen: opts.MaxLen, Reps: opts.Reps,
		Matching: "baselines matched to BlackMamba on active parameters (presets <size>-mamba-total match total parameters)",
		Method: "random weights, block matmul weights and the head stored in bfloat16 (bm.CastWeights; router, scan parameters, norms float32), greedy argmax on the device; " +
			"total_ms(L) is the wall time from the prefill call to the L-th token being available on the host " +
			"(resident at one step per call: one generation of max_len tokens whose history is copied to the host at each L and L-window, the calls launched ahead continuing), " +
			"per_token_ms(L) is the wall time of the window steps ending at token L divided by the window; " +
			"graphs are compiled for all KV-cache lengths before timing; median/min/max over reps",
		Created: time.Now().UTC().Format(time.RFC3339),
	}
	for _, name := range opts.Archs {
		cfg, err := bm.Preset(name)
		if err != nil {
			return res, fmt.Errorf("latency: -archs: %w", err)
		}
		var afterRep func(*Arch) error
		if opts.AfterArch != nil {
			afterRep = func(a *Arch) error {
				partial := *res
				partial.Archs = append(append([]Arch(nil), res.Archs...), *a)
				return opts.AfterArch(&partial)
			}
		}
		a, err := runArch(backend, cfg, opts, afterRep)
		if err != nil {
			return res, fmt.Errorf("latency: %s: %w", name, err)
		}
		res.Archs = append(res.Archs, *a)
		if opts.AfterArch != nil {
			if err := opts.AfterArch(res); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

// runArch times one architecture; afterRep, if not nil, receives the architecture's statistics
// over the passes done so far after every pass but the last.
func runArch(backend backends.Backend, cfg bm.Config, opts Options, afterRep func(*Arch) error) (*Arch, error) {
	cfg.ComputeDType = "bfloat16"
	cfg.MaxSeqLen = max(cfg.MaxSeqLen, opts.MaxLen)
	cfg.StepRows, cfg.StepFuse = opts.StepRows, opts.StepFuse
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	total, active := cfg.ParamCounts()
	a := &Arch{Config: cfg.Name, Pattern: cfg.Pattern, Blocks: len(cfg.Blocks()), Dim: cfg.Dim,
		TotalParams: total, ActiveParams: active, ComputeDType: cfg.ComputeDType, StepRows: cfg.StepRows,
		StepTransposed: opts.StepWeights != bm.StepInOut, StepFolded: opts.StepWeights == bm.StepFolded, StepFuse: cfg.StepFuse,
		Resident: opts.Resident, PeakMemoryBytes: -1, TokensRepeat: true}
	fmt.Fprintf(opts.Log, "%s: %d blocks, d=%d, %.3gB total / %.3gB active parameters\n",
		cfg.Name, a.Blocks, cfg.Dim, float64(total)/1e9, float64(active)/1e9)

	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, opts.Seed)
	defer ctx.Finalize()
	start := time.Now()
	if err := bm.InitWeights(backend, ctx, cfg); err != nil {
		return nil, fmt.Errorf("initialising weights: %w", err)
	}
	if _, err := bm.CastWeights(backend, ctx, bm.ComputeDType(cfg)); err != nil {
		return nil, err
	}
	if opts.ChooseSteps != nil {
		layout, fuse, err := opts.ChooseSteps(backend, bm.StepWeightBytes(ctx))
		if err != nil {
			return nil, err
		}
		opts.StepWeights, cfg.StepFuse = layout, fuse
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		a.StepTransposed, a.StepFolded, a.StepFuse = layout != bm.StepInOut, layout == bm.StepFolded, fuse
		fmt.Fprintf(opts.Log, "  steps: %s weights, step fuse %q\n", layout, fuse)
	}
	if _, err := bm.SetStepLayout(backend, ctx, opts.StepWeights); err != nil {
		return nil, err
	}
	a.WeightsS = time.Since(start).Seconds()
	fmt.Fprintf(opts.Log, "  weights ready: %.1fs; compiling\n", a.WeightsS)
	dec, err := bm.NewDecoder(backend, ctx, cfg, 1, opts.MaxLen)
	if err != nil {
		return nil, err
	}
	g := bm.NewGreedyDecoder(dec)
	g.Unroll = opts.Unroll
	g.SyncCalls = opts.SyncCalls
	if opts.Unroll > 1 {
		a.Unroll = opts.Unroll
	}
	defer g.Release()
	defer func() { a.PipelinedCalls = g.PipelinedCalls() }()

	warm, pass := g.WarmUpGreedy, timePass
	if opts.Resident {
		warm, pass = g.WarmUpResident, timePassResident
	}
	if err := warm(1, opts.MaxLen); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	a.CompileS = time.Since(start).Seconds()
	fmt.Fprintf(opts.Log, "  warm-up: %.1fs (weights %.1fs, then compiling and running each graph once %.1fs)\n", a.CompileS, a.WeightsS, a.CompileS-a.WeightsS)

	warmGraphs := g.GraphsBuilt()
	lengths := Lengths(opts.MinLen, opts.MaxLen)
	marks := map[int]bool{1: true}
	for _, L := range lengths {
		marks[L], marks[L-Window(L)] = true, true
	}
	var firsts []float64
	at := make([][]float64, opts.Reps) // at[r][n]: ms when n tokens were available, for the marks
	var refTokens map[int]int32
	for r := range opts.Reps {
		times, toks, err := pass(g, opts.MaxLen, marks)
		if err != nil {
			return nil, fmt.Errorf("repetition %d: %w", r+1, err)
		}
		at[r] = times
		firsts = append(firsts, times[1])
		if refTokens == nil {
			refTokens = toks
		} else {
			for n, t := range toks {
				if refTokens[n] != t {
					a.TokensRepeat = false
				}
			}
		}
		fmt.Fprintf(opts.Log, "  rep %d: %d tokens in %.0f ms\n", r+1, opts.MaxLen, times[opts.MaxLen])
		if n := g.GraphsBuilt() - warmGraphs; n != a.TimedCompiles {
			fmt.Fprintf(opts.Log, "  WARNING: rep %d compiled %d graphs the warm-up had not: its times include compilation\n", r+1, n-a.TimedCompiles)
			a.TimedCompiles = n
		}
		runtime.GC()
		if afterRep != nil && r+1 < opts.Reps {
			summarize(a, firsts, at[:r+1], lengths, nil)
			if xla.MemoryIsHighWater() {
				a.PeakMemoryBytes = xla.DeviceMemoryUsed()
			}
			a.PipelinedCalls = g.PipelinedCalls()
			if err := afterRep(a); err != nil {
				return nil, err
			}
		}
	}
	summarize(a, firsts, at, lengths, opts.Log)
	if xla.MemoryIsHighWater() {
		a.PeakMemoryBytes = xla.DeviceMemoryUsed()
	}
	return a, nil
}

// summarize sets a's first-token time, points and RepsDone from the passes in at (at[r][n]: ms
// when n tokens were available in pass r) and firsts; log, if not nil, gets a line per length.
func summarize(a *Arch, firsts []float64, at [][]float64, lengths []int, log io.Writer) {
	a.RepsDone = len(at)
	a.FirstTokenMS = stat(firsts)
	a.Points = nil
	for _, L := range lengths {
		w := Window(L)
		var tot, per []float64
		for _, times := range at {
			tot = append(tot, times[L])
			per = append(per, (times[L]-times[L-w])/float64(w))
		}
		p := Point{L: L, TotalMS: stat(tot), PerTokenMS: stat(per), Window: w}
		a.Points = append(a.Points, p)
		if log != nil {
			fmt.Fprintf(log, "  L=%-6d total %9.1f ms [%.1f, %.1f]  per token %.3f ms\n", L, p.TotalMS.Median, p.TotalMS.Min, p.TotalMS.Max, p.PerTokenMS.Median)
		}
	}
}

// timePass generates n tokens greedily from a one-token prompt and returns, for each count in
// marks, the milliseconds from the start until that many tokens were on the host (the token at
// a mark is copied to the host, which waits for the device), and the tokens at the marks. The
// other tokens stay on the device until the pass ends. Steps run g.Unroll per call, never past
// the next mark (bm.GreedyDecoder.NextSteps), one at a time where only a call of another size
// would fit or realign.
func timePass(g *bm.GreedyDecoder, n int, marks map[int]bool) ([]float64, map[int]int32, error) {
	times := make([]float64, n+1)
	toks := map[int]int32{}
	held := make([]*tensors.Tensor, 0, n)
	defer func() {
		for _, t := range held {
			t.FinalizeAll()
		}
	}()
	stops := checkpoints(marks, 0, n)
	start := time.Now()
	tok, err := g.PrefillGreedy([][]int{{1}})
	if err != nil {
		return nil, nil, err
	}
	next, count := []*tensors.Tensor{tok}, 0
	for {
		held = append(held, next...)
		count += len(next)
		tok = next[len(next)-1]
		if marks[count] {
			v, err := tensors.CopyFlatData[int32](tok)
			if err != nil {
				return nil, nil, err
			}
			times[count] = float64(time.Since(start).Nanoseconds()) / 1e6
			toks[count] = v[0]
		}
		if count == n {
			return times, toks, nil
		}
		// The steps of this call must not pass the next mark (with a one-token prompt the
		// decoder's position equals the token count).
		for stops[0] <= count {
			stops = stops[1:]
		}
		// After the first call, a call that would only realign to the unrolled size (a mark
		// that is not a multiple of it) runs as single steps instead, so that the pass uses no
		// call size the warm-up did not compile (bm.GreedyDecoder.WarmUpGreedy: the first
		// call's, 1 and Unroll).
		k := g.NextSteps(stops[0])
		if count > 1 && k != g.Unroll {
			k = 1
		}
		if next, err = g.StepsGreedy(tok, k); err != nil {
			return nil, nil, err
		}
	}
}

// timePassResident is timePass through the resident steps. With one step per call, one
// bm.GreedyDecoder.GenerateResidentMarks runs the whole pass and copies the token history to
// the host at each checkpoint (the time of the checkpoint) without stopping the calls launched
// ahead. Unrolled, one GenerateResident call runs from each checkpoint to the next, whose
// tokens come to the host at its end; the last token feeds the next one from the host.
func timePassResident(g *bm.GreedyDecoder, n int, marks map[int]bool) ([]float64, map[int]int32, error) {
	times := make([]float64, n+1)
	toks := map[int]int32{}
	stops := checkpoints(marks, 1, n)
	start := time.Now()
	tok, err := g.PrefillGreedy([][]int{{1}})
	if err != nil {
		return nil, nil, err
	}
	v, err := tensors.CopyFlatData[int32](tok)
	if err != nil {
		tok.FinalizeAll()
		return nil, nil, err
	}
	times[1], toks[1] = float64(time.Since(start).Nanoseconds())/1e6, v[0]
	if g.Unroll <= 1 {
		// Step m of the n-1 after the prefill makes token m+1.
		steps := make([]int, len(stops))
		for i, s := range stops {
			steps[i] = s - 1
		}
		_, err := g.GenerateResidentMarks(tok, n-1, steps, func(m int, last []int32) {
			times[m+1], toks[m+1] = float64(time.Since(start).Nanoseconds())/1e6, last[0]
		})
		tok.FinalizeAll()
		if err != nil {
			return nil, nil, err
		}
		return times, toks, nil
	}
	count := 1
	for _, stop := range stops {
		got, err := g.GenerateResident(tok, stop-count)
		tok.FinalizeAll()
		if err != nil {
			return nil, nil, err
		}
		count = stop
		last := got[0][len(got[0])-1]
		if marks[count] {
			times[count], toks[count] = float64(time.Since(start).Nanoseconds())/1e6, last
		}
		tok = tensors.FromFlatDataAndDimensions([]int32{last}, 1)
	}
	tok.FinalizeAll()
	return times, toks, nil
}

// checkpoints returns the marks between after and n (both excluded) in order, then n: where a
// pass stops to take a time.
func checkpoints(marks map[int]bool, after, n int) []int {
	var stops []int
	for m := range marks {
		if m > after && m < n {
			stops = append(stops, m)
		}
	}
	sort.Ints(stops)
	return append(stops, n)
}

// stat returns the median, minimum and maximum of xs (non-empty).
func stat(xs []float64) Stat {
	s := slices.Clone(xs)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: m, Min: s[0], Max: s[len(s)-1]}
}
