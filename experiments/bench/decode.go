package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/bm"
)

// PeakHBMBytesPerS is the specified HBM3e bandwidth of an H200 (bytes/s), the reference of the
// bandwidth-utilisation figure of the decode benchmark.
const PeakHBMBytesPerS = 4.8e12

// Decode times batch-1 greedy generation of cfg with random weights (seed 1; timing does not
// depend on their values): the matmul weights and the head are stored in cfg's compute dtype
// (bm.CastWeights), a one-token prompt is prefilled and tokens tokens are generated with the
// tokens kept on the device (bm.GreedyDecoder). Every graph of the generation is compiled
// first (CompileS: weight initialisation, casting and compilation, or compilation only where
// Extra weights_reused is 1: the previous row's weights, decodeCache); then one untimed pass,
// then reps timed passes.
//
// Ms is the median over the passes of the time per generated token after the first one
// (the steps only: (time of the last token − time of the first token) / (tokens − 1)), MinMs
// the fastest pass; TokensPerS = 1000 / Ms. Extra holds first_token_ms (median time from the
// one-token prompt, which the decoder runs as a step from empty states, until its token is on
// the host), params_active, weight_bytes (the active
// parameters at the compute dtype's size: what one step reads at least), weight_gb_per_s
// (weight_bytes / Ms, the effective read bandwidth), bw_util (that against PeakHBMBytesPerS)
// and tokens_repeat (1 when every pass generated the same tokens, as greedy decoding must).
// With unroll k > 1 the steps run k per executable call (bm.GreedyDecoder.Unroll; the variant
// says "unroll k" and Extra holds unroll). DecodeBatch does the same for batch sequences decoded
// together. tokens must be >= 2, unroll and reps >= 1.
func Decode(backend backends.Backend, cfg bm.Config, tokens, unroll, reps int) Row {
	return DecodeBatch(backend, cfg, 1, tokens, unroll, reps)
}

// DecodeBatch is Decode for batch sequences generated together (one-token prompts 1, 2, …):
// Ms is still the time per step, TokensPerS counts the tokens of all sequences (batch·1000/Ms),
// and weight_gb_per_s the active weights read once per step. At batch 1 every matrix-vector
// product of a step is one row against a weight matrix, which XLA's GPU compiler may lower as
// an elementwise product and a reduction instead of a matrix multiplication; batch 2 shows
// what a step costs when it is not a vector product.
func DecodeBatch(backend backends.Backend, cfg bm.Config, batch, tokens, unroll, reps int) Row {
	return DecodeVariant(backend, cfg, batch, tokens, unroll, reps, bm.StepInOut)
}

// DecodeVariant is DecodeBatch with the decode steps reading the weights of layout (copies made
// after the cast by bm.SetStepLayout); with a layout other than inout the variant names it, and
// Extra holds transposed = 1 (both copy layouts are transposed) and folded = 1 for the copies
// carrying the norm gains.
func DecodeVariant(backend backends.Backend, cfg bm.Config, batch, tokens, unroll, reps int, layout bm.StepLayout) Row {
	return DecodeWith(backend, cfg, batch, tokens, unroll, reps, layout, LoopHeld)
}

// Loop is how DecodeWith runs the steps after the first token.
type Loop string

const (
	// LoopHeld: bm.GreedyDecoder.StepsGreedy, each call's tokens kept as tensors and the
	// position sent from the host.
	LoopHeld Loop = "held"
	// LoopResident: bm.GreedyDecoder.GenerateResident, every input of a call kept on the device
	// and donated (on XLA written over by the call's outputs), the tokens read once at the end;
	// where the backend has a bm.Pipeline (XLA), the calls are launched ahead of the device.
	LoopResident Loop = "resident"
	// LoopResidentSync: GenerateResident waiting for each call to finish before the next
	// (bm.GreedyDecoder.SyncCalls).
	LoopResidentSync Loop = "resident-sync"
)

// ParseLoop reads a Loop by name.
func ParseLoop(s string) (Loop, error) {
	switch l := Loop(s); l {
	case LoopHeld, LoopResident, LoopResidentSync:
		return l, nil
	}
	return "", fmt.Errorf("decode loop %q: want %q, %q or %q", s, LoopHeld, LoopResident, LoopResidentSync)
}

// DecodeWith is DecodeVariant with the steps after the first token run as loop says. With a
// resident loop the variant says "resident" (and "sync calls" for LoopResidentSync), and Extra
// holds resident = 1, sync_calls and pipelined_calls (the calls launched ahead, over the
// warm-up and every pass).
func DecodeWith(backend backends.Backend, cfg bm.Config, batch, tokens, unroll, reps int, layout bm.StepLayout, loop Loop) Row {
	resident := loop == LoopResident || loop == LoopResidentSync
	transposed := layout != bm.StepInOut
	variant := fmt.Sprintf("%s %s greedy", cfg.Name, cfg.ComputeDType)
	if unroll > 1 {
		variant += fmt.Sprintf(", unroll %d", unroll)
	}
	if cfg.StepRows > batch {
		variant += fmt.Sprintf(", step rows %d", cfg.StepRows)
	}
	if transposed {
		variant += ", " + string(layout)
	}
	if cfg.StepFuse != "" {
		variant += ", fuse " + strings.ReplaceAll(cfg.StepFuse, ",", "+")
	}
	if resident {
		variant += ", resident"
	}
	if loop == LoopResidentSync {
		variant += ", sync calls"
	}
	row := Row{Bench: "decode", Variant: variant,
		Shape: fmt.Sprintf("batch %d, prompt 1, %d tokens", batch, tokens), Reps: reps, PeakBytes: -1}
	if tokens < 2 || reps < 1 || unroll < 1 || batch < 1 {
		row.Err = fmt.Sprintf("decode: tokens (%d) must be >= 2, batch (%d), unroll (%d) and reps (%d) >= 1", tokens, batch, unroll, reps)
		emit(&row)
		return row
	}
	_, active := cfg.ParamCounts()
	dtype := bm.ComputeDType(cfg)
	weightBytes := float64(active) * float64(dtype.Size())
	row.Extra = map[string]float64{"params_active": float64(active), "weight_bytes": weightBytes, "unroll": float64(unroll), "batch": float64(batch), "step_rows": float64(cfg.StepRows), "transposed": b2f(transposed), "folded": b2f(layout == bm.StepFolded), "resident": b2f(resident)}
	if resident {
		row.Extra["sync_calls"] = b2f(loop == LoopResidentSync)
	}
	err := catch(func() error {
		cfg.MaxSeqLen = max(cfg.MaxSeqLen, tokens)
		if err := cfg.Validate(); err != nil {
			return err
		}
		start := time.Now()
		ctx, reused, err := decodeWeights(backend, cfg, dtype, layout)
		if err != nil {
			return err
		}
		row.Extra["weights_reused"] = b2f(reused)
		// The prompt's token and tokens-1 steps: tokens positions in all.
		dec, err := bm.NewDecoder(backend, ctx, cfg, batch, tokens)
		if err != nil {
			return err
		}
		g := bm.NewGreedyDecoder(dec)
		g.Unroll = unroll
		g.SyncCalls = loop == LoopResidentSync
		defer g.Release()
		if resident {
			defer func() { row.Extra["pipelined_calls"] = float64(g.PipelinedCalls()) }()
		}
		warm, timedPass := g.WarmUpGreedy, decodePass
		if resident {
			warm, timedPass = g.WarmUpResident, residentPass
		}
		if err := warm(1, tokens); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		row.CompileS = time.Since(start).Seconds()
		var perToken, firsts []float64
		var ref []int32
		repeat := 1.0
		for pass := range reps + 1 {
			p, err := timedPass(g, batch, tokens, pass == reps)
			if err != nil {
				return fmt.Errorf("pass %d: %w", pass+1, err)
			}
			if pass == 0 { // untimed
				ref = p.tokens
				continue
			}
			if !slices.Equal(p.tokens, ref) {
				repeat = 0
			}
			perToken = append(perToken, p.stepsMs/float64(tokens-1))
			firsts = append(firsts, p.firstMs)
		}
		slices.Sort(perToken)
		slices.Sort(firsts)
		row.Ms, row.MinMs = perToken[len(perToken)/2], perToken[0]
		row.Extra["first_token_ms"] = firsts[len(firsts)/2]
		row.Extra["tokens_repeat"] = repeat
		return nil
	})
	if err != nil {
		row.Err = err.Error()
		emit(&row)
		return row
	}
	row.TokensPerS = float64(batch) * 1000 / row.Ms
	row.Extra["weight_gb_per_s"] = weightBytes / (row.Ms / 1000) / 1e9
	row.Extra["bw_util"] = weightBytes / (row.Ms / 1000) / PeakHBMBytesPerS
	emit(&row)
	return row
}

// decodeCache holds the weights of the last decode row: rows that differ only in
// bm.Config.StepFuse, StepRows or MaxSeqLen, the batch, the tokens, the unroll or the loop read
// the same weights and copies (FoldStepWeights makes every copy any fusion reads), so a run of
// such rows initialises them once. On a GPU making the 1.5b weights takes most of a row's time.
var decodeCache struct {
	key string
	ctx *context.Context
}

// decodeWeights returns the context of random weights (seed 1) of cfg, cast to dtype, with the
// step copies of layout: the cached one when the previous row made the same (reused), else new
// ones, which replace the cache (the old context is finalized).
func decodeWeights(backend backends.Backend, cfg bm.Config, dtype dtypes.DType, layout bm.StepLayout) (ctx *context.Context, reused bool, err error) {
	c := cfg
	c.StepFuse, c.StepRows, c.MaxSeqLen = "", 0, 0
	key := fmt.Sprintf("%s|%+v|%s|%s", backend.Name(), c, dtype, layout)
	if decodeCache.ctx != nil && decodeCache.key == key {
		return decodeCache.ctx, true, nil
	}
	if decodeCache.ctx != nil {
		decodeCache.ctx.Finalize()
		decodeCache.ctx, decodeCache.key = nil, ""
	}
	ctx = context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(1))
	fail := func(err error) (*context.Context, bool, error) {
		ctx.Finalize()
		return nil, false, err
	}
	if err := bm.InitWeights(backend, ctx, cfg); err != nil {
		return fail(fmt.Errorf("initialising weights: %w", err))
	}
	if _, err := bm.CastWeights(backend, ctx, dtype); err != nil {
		return fail(err)
	}
	if _, err := bm.SetStepLayout(backend, ctx, layout); err != nil {
		return fail(err)
	}
	decodeCache.ctx, decodeCache.key = ctx, key
	return ctx, false, nil
}

// decodeResult is one timed generation.
type decodeResult struct {
	firstMs float64 // prefill until the first token is on the host
	stepsMs float64 // from then until the last token is on the host
	tokens  []int32
}

// decodePass generates n tokens greedily for each of batch sequences from one-token prompts
// (1, 2, …), g.Unroll steps per call (bm.GreedyDecoder.NextSteps). The first and the last
// tokens are copied to the host when they are produced (waiting for the device); the others
// stay on the device until the pass is timed. With traced, the steps after the first token are
// the region Trace summarises into the row.
func decodePass(g *bm.GreedyDecoder, batch, n int, traced bool) (decodeResult, error) {
	var r decodeResult
	held := make([]*tensors.Tensor, 0, n)
	defer func() { finalize(held) }()
	tok, _, afterFirst, err := prefillFirst(g, batch, &r)
	if err != nil {
		return r, err
	}
	held = append(held, tok)
	from := traceNow()
	for len(held) < n {
		next, err := g.StepsGreedy(tok, g.NextSteps(n))
		if err != nil {
			return r, err
		}
		held = append(held, next...)
		tok = next[len(next)-1]
	}
	if _, err := tensors.CopyFlatData[int32](tok); err != nil {
		return r, err
	}
	r.stepsMs = float64(time.Since(afterFirst).Nanoseconds()) / 1e6
	if traced {
		regionEnd(from, n-1)
	}
	r.tokens = make([]int32, 0, len(held)*batch)
	for i, t := range held {
		v, err := tensors.CopyFlatData[int32](t)
		if err != nil {
			return r, fmt.Errorf("reading token %d: %w", i, err)
		}
		r.tokens = append(r.tokens, v...)
	}
	return r, nil
}

// residentPass is decodePass through bm.GreedyDecoder.GenerateResident: the first token is
// copied to the host when it is produced, then the other n-1 come back together at the end.
func residentPass(g *bm.GreedyDecoder, batch, n int, traced bool) (decodeResult, error) {
	var r decodeResult
	tok, first, afterFirst, err := prefillFirst(g, batch, &r)
	if err != nil {
		return r, err
	}
	defer tok.FinalizeAll()
	from := traceNow()
	rest, err := g.GenerateResident(tok, n-1)
	if err != nil {
		return r, err
	}
	r.stepsMs = float64(time.Since(afterFirst).Nanoseconds()) / 1e6
	if traced {
		regionEnd(from, n-1)
	}
	// In the order decodePass gives: step by step, the batch's tokens of each step together.
	r.tokens = append(r.tokens, first...)
	for i := range n - 1 {
		for b := range batch {
			r.tokens = append(r.tokens, rest[b][i])
		}
	}
	return r, nil
}

// prefillFirst starts batch sequences from one-token prompts (1, 2, …) and waits for their first
// tokens on the host: it returns them on the device and on the host, and when they arrived, and
// sets r.firstMs to the time that took.
func prefillFirst(g *bm.GreedyDecoder, batch int, r *decodeResult) (*tensors.Tensor, []int32, time.Time, error) {
	prompts := make([][]int, batch)
	for b := range prompts {
		prompts[b] = []int{1 + b}
	}
	start := time.Now()
	tok, err := g.PrefillGreedy(prompts)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	first, err := tensors.CopyFlatData[int32](tok)
	if err != nil {
		tok.FinalizeAll()
		return nil, nil, time.Time{}, err
	}
	at := time.Now()
	r.firstMs = float64(at.Sub(start).Nanoseconds()) / 1e6
	return tok, first, at, nil
}

// b2f is 1 for true and 0 for false.
func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
