package bm

import (
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Device-resident greedy decoding: the token chosen at each step stays on the device and feeds
// the next step directly, so a loop of steps never waits for a copy to the host. Each step
// returns the next tokens [B] int32: the argmax of the logits over the real vocabulary
// (ids < VocabReal). This is the path used to measure generation latency; Generate with
// Greedy() gives the same tokens through host-side sampling.

// GreedyDecoder runs greedy generation on the device with the states and graphs of a Decoder.
// It shares the decoder's sequence: PrefillGreedy starts a sequence for both, and Step and
// StepGreedy calls may be mixed.
type GreedyDecoder struct {
	*Decoder
	greedyStep *context.Exec // step graph returning tokens instead of logits
	argmax     *Exec         // logits [B, V] -> tokens [B]
}

// NewGreedyDecoder returns a greedy decoder over d.
func NewGreedyDecoder(d *Decoder) *GreedyDecoder { return &GreedyDecoder{Decoder: d} }

// greedyExec returns the step executable that returns next tokens instead of logits (one
// compilation per KV-cache length, like the logits step).
func (d *GreedyDecoder) greedyExec() (*context.Exec, error) {
	if d.greedyStep != nil {
		return d.greedyStep, nil
	}
	cfg := d.cfg
	e, err := context.NewExec(d.backend, d.ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		outs := decodeStepGraph(ctx, cfg, inputs[0], inputs[1], inputs[2:])
		outs[0] = greedyArgmax(cfg, outs[0])
		return outs
	})
	if err != nil {
		return nil, err
	}
	e.SetMaxCache(-1)
	d.greedyStep = e
	return e, nil
}

// greedyArgmax returns the argmax [B] int32 of logits [B, V] over the ids < cfg.VocabReal.
func greedyArgmax(cfg Config, logits *Node) *Node {
	ids := SliceAxis(logits, -1, AxisRange(0, cfg.VocabReal))
	return ArgMax(ids, -1, dtypes.Int32)
}

// argmaxExec returns the executable mapping logits [B, V] to their greedy tokens [B] int32.
func (d *GreedyDecoder) argmaxExec() (*Exec, error) {
	if d.argmax != nil {
		return d.argmax, nil
	}
	cfg := d.cfg
	e, err := NewExec(d.backend, func(logits *Node) *Node { return greedyArgmax(cfg, logits) })
	if err != nil {
		return nil, err
	}
	d.argmax = e
	return e, nil
}

// PrefillGreedy starts new sequences from prompts like Prefill and returns the greedy next
// tokens [B] int32, left on the device.
func (d *GreedyDecoder) PrefillGreedy(prompts [][]int) (*tensors.Tensor, error) {
	logits, err := d.Prefill(prompts)
	if err != nil {
		return nil, err
	}
	defer logits.FinalizeAll()
	e, err := d.argmaxExec()
	if err != nil {
		return nil, fmt.Errorf("bm: GreedyDecoder.PrefillGreedy: %w", err)
	}
	outs, err := e.Exec(logits)
	if err != nil {
		return nil, fmt.Errorf("bm: GreedyDecoder.PrefillGreedy: %w", err)
	}
	return outs[0], nil
}

// StepGreedy feeds tokens tok [B] int32 (a tensor as returned by PrefillGreedy or a previous
// StepGreedy; it is not consumed) and returns the greedy next tokens [B] int32, left on the
// device. The KV caches grow as in Step.
func (d *GreedyDecoder) StepGreedy(tok *tensors.Tensor) (*tensors.Tensor, error) {
	if d.states == nil && d.pos == 0 {
		return nil, fmt.Errorf("bm: GreedyDecoder.StepGreedy: call Prefill or PrefillGreedy first")
	}
	if tok == nil || tok.DType() != dtypes.Int32 || tok.Rank() != 1 || tok.Shape().Dim(0) != d.batch {
		shape := "nil"
		if tok != nil {
			shape = tok.Shape().String()
		}
		return nil, fmt.Errorf("bm: GreedyDecoder.StepGreedy: tokens must be int32 [%d], got %s", d.batch, shape)
	}
	if d.hasAttention && d.pos >= d.maxLen {
		return nil, fmt.Errorf("bm: GreedyDecoder.StepGreedy: position %d is past maxLen %d (the KV-cache length)", d.pos, d.maxLen)
	}
	if d.hasAttention && d.pos >= d.kvLen {
		if err := d.growKV(KVCacheBucket(d.pos+1, d.maxLen)); err != nil {
			return nil, fmt.Errorf("bm: GreedyDecoder.StepGreedy: growing the KV caches: %w", err)
		}
	}
	e, err := d.greedyExec()
	if err != nil {
		return nil, fmt.Errorf("bm: GreedyDecoder.StepGreedy: %w", err)
	}
	args := []any{tok, int32(d.pos)}
	for i, s := range d.states {
		donated, err := DonateTensorBuffer(s, d.backend, 0)
		if err != nil {
			return nil, fmt.Errorf("bm: GreedyDecoder.StepGreedy: donating state %d: %w", i, err)
		}
		args = append(args, donated)
	}
	outs, err := e.Exec(args...)
	if err != nil {
		return nil, fmt.Errorf("bm: GreedyDecoder.StepGreedy: %w", err)
	}
	d.states = outs[1:]
	d.pos++
	return outs[0], nil
}

// GenerateGreedy continues one prompt (batch 1) by n greedy tokens on the device and returns
// them; the tokens are copied to the host only after the last step.
func (d *GreedyDecoder) GenerateGreedy(prompt []int, n int) ([]int, error) {
	if d.batch != 1 {
		return nil, fmt.Errorf("bm: GreedyDecoder.GenerateGreedy needs a decoder of batch 1, this one has batch %d", d.batch)
	}
	if d.hasAttention && len(prompt)+n-1 > d.maxLen {
		return nil, fmt.Errorf("bm: GreedyDecoder.GenerateGreedy: prompt (%d) + n (%d) - 1 exceeds maxLen %d", len(prompt), n, d.maxLen)
	}
	if n <= 0 {
		return nil, nil
	}
	toks := make([]*tensors.Tensor, 0, n)
	defer func() {
		for _, t := range toks {
			t.FinalizeAll()
		}
	}()
	tok, err := d.PrefillGreedy([][]int{prompt})
	if err != nil {
		return nil, err
	}
	toks = append(toks, tok)
	for len(toks) < n {
		if tok, err = d.StepGreedy(tok); err != nil {
			return nil, err
		}
		toks = append(toks, tok)
	}
	out := make([]int, n)
	for i, t := range toks {
		v, err := tensors.CopyFlatData[int32](t)
		if err != nil {
			return nil, fmt.Errorf("bm: GreedyDecoder.GenerateGreedy: reading token %d: %w", i, err)
		}
		out[i] = int(v[0])
	}
	return out, nil
}

// WarmUpGreedy compiles, before any timing, every graph a greedy generation of upTo tokens
// from a prompt of promptLen tokens will run: the prefill, the argmax, the greedy step for each
// KV-cache length up to the one holding promptLen+upTo-1 positions, and the cache extensions
// between them. It runs each step once on scratch states and leaves the decoder without a
// sequence (call PrefillGreedy next).
func (d *GreedyDecoder) WarmUpGreedy(promptLen, upTo int) error {
	if promptLen < 1 || upTo < 1 {
		return fmt.Errorf("bm: GreedyDecoder.WarmUpGreedy: promptLen (%d) and upTo (%d) must be positive", promptLen, upTo)
	}
	last := promptLen + upTo - 1 // positions consumed by the end
	if d.hasAttention && last > d.maxLen {
		return fmt.Errorf("bm: GreedyDecoder.WarmUpGreedy: prompt (%d) + upTo (%d) - 1 exceeds maxLen %d", promptLen, upTo, d.maxLen)
	}
	prompt := make([]int, promptLen)
	tok, err := d.PrefillGreedy([][]int{prompt})
	if err != nil {
		return err
	}
	// One step per KV-cache bucket: jump the position to the start of the next bucket, where
	// StepGreedy grows the caches and runs the step graph of that length.
	for {
		next, err := d.StepGreedy(tok)
		tok.FinalizeAll()
		if err != nil {
			return err
		}
		tok = next
		if !d.hasAttention || d.kvLen >= KVCacheBucket(last, d.maxLen) {
			break
		}
		d.pos = d.kvLen
	}
	if _, err := tensors.CopyFlatData[int32](tok); err != nil {
		return fmt.Errorf("bm: GreedyDecoder.WarmUpGreedy: %w", err)
	}
	tok.FinalizeAll()
	for _, s := range d.states {
		s.FinalizeAll()
	}
	d.states, d.pos, d.kvLen = nil, 0, 0
	return nil
}

// Release frees the device memory held by the decoder: the states of the current sequence and
// the compiled graphs. The variables in the context are not touched. The decoder must not be
// used afterwards.
func (d *GreedyDecoder) Release() {
	for _, s := range d.states {
		s.FinalizeAll()
	}
	d.states, d.pos, d.kvLen = nil, 0, 0
	if d.greedyStep != nil {
		d.greedyStep.Finalize()
	}
	if d.argmax != nil {
		d.argmax.Finalize()
	}
	d.step.Finalize()
	for _, e := range d.prefill {
		e.Finalize()
	}
	for _, e := range d.extend {
		e.Finalize()
	}
}
