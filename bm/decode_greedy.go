package bm

import (
	"fmt"
	"time"

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
	greedyStep *context.Exec                 // step graph returning tokens instead of logits
	multi      map[int]*context.Exec         // k unrolled greedy steps in one graph, by k
	argmax     *Exec                         // logits [B, V] -> tokens [B]
	resident   map[residentKey]*readOnlyExec // GenerateResident's executables
	turn       int                           // which of a pair GenerateResident's next call runs

	// Unroll is the number of greedy steps GenerateGreedy and WarmUpGreedy put into one
	// executable (StepsGreedy); 0 or 1 runs one step per call. A batch-1 step of a large model
	// is a few thousand small kernels and one call with every weight as an argument: unrolling
	// k steps pays the per-call cost once per k tokens, at the price of a k times larger graph
	// to compile.
	Unroll int
	// StreamInterval is how long GenerateResidentStream lets calls run between copies of the
	// token history to the host: it copies after a call only once this much time has passed
	// since the last copy (and always after the last call), and hands the tokens since then to
	// onToken together. 0 copies after every call. A stop asked by onToken is then seen up to
	// this much later; the steps run past it are discarded.
	StreamInterval time.Duration
	// SyncCalls makes every resident call (GenerateResident, GenerateResidentStream) wait for
	// the device before the next is launched. By default, on a backend with a registered
	// Pipeline (RegisterPipeline: the XLA backend in blackmamba's commands), the calls after
	// the first of each run of equal calls are launched ahead of the device, a few in flight,
	// so that the host's work for a call overlaps the kernels of the previous one.
	SyncCalls bool
	pipelined int // resident calls launched through a Pipeline
}

// PipelinedCalls reports how many resident calls were launched ahead through a Pipeline.
func (d *GreedyDecoder) PipelinedCalls() int { return d.pipelined }

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
		d.built++
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

// multiExec returns the executable of k greedy steps unrolled in one graph: inputs token [B],
// pos (the position of that token) and the states; outputs the k next tokens [B] in order,
// then the states. One compilation per KV-cache length, like the single step.
func (d *GreedyDecoder) multiExec(k int) (*context.Exec, error) {
	if e := d.multi[k]; e != nil {
		return e, nil
	}
	cfg := d.cfg
	e, err := context.NewExec(d.backend, d.ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		d.built++
		toks := make([]*Node, 0, k)
		states := greedySteps(ctx, cfg, k, inputs[0], inputs[1], inputs[2:], func(tok, _ *Node) { toks = append(toks, tok) })
		return append(toks, states...)
	})
	if err != nil {
		return nil, err
	}
	e.SetMaxCache(-1)
	if d.multi == nil {
		d.multi = map[int]*context.Exec{}
	}
	d.multi[k] = e
	return e, nil
}

// greedySteps builds k greedy steps from tok [B] int32 at position pos (int32 scalar) and the
// states, calling each with every step's chosen tokens and the position it was fed; it returns
// the states after the last step.
func greedySteps(ctx *context.Context, cfg Config, k int, tok, pos *Node, states []*Node, each func(tok, p *Node)) []*Node {
	for i := range k {
		p := pos
		if i > 0 {
			p = AddScalar(pos, float64(i))
		}
		outs := decodeStepGraph(ctx, cfg, tok, p, states)
		tok, states = greedyArgmax(cfg, outs[0]), outs[1:]
		each(tok, p)
	}
	return states
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
	e, err := NewExec(d.backend, func(logits *Node) *Node {
		d.built++
		return greedyArgmax(cfg, logits)
	})
	if err != nil {
		return nil, err
	}
	d.argmax = e
	return e, nil
}

// PrefillGreedy starts new sequences from prompts like Prefill and returns the greedy next
// tokens [B] int32, left on the device.
func (d *GreedyDecoder) PrefillGreedy(prompts [][]int) (*tensors.Tensor, error) {
	if err := d.checkPrompts("GreedyDecoder.PrefillGreedy", prompts); err != nil {
		return nil, err
	}
	if len(prompts[0]) == 1 {
		// One token: the greedy step from empty states, no prefill or argmax graph.
		d.startEmpty()
		ids := make([]int32, d.batch)
		for b, p := range prompts {
			ids[b] = int32(p[0])
		}
		outs, err := d.steps("PrefillGreedy", tensors.FromFlatDataAndDimensions(ids, d.batch), 1)
		if err != nil {
			return nil, err
		}
		return outs[0], nil
	}
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
	outs, err := d.steps("StepGreedy", tok, 1)
	if err != nil {
		return nil, err
	}
	return outs[0], nil
}

// StepsGreedy is k calls of StepGreedy in one executable: it feeds tok [B] int32 (not
// consumed) and returns the k greedy tokens [B] int32 that follow, in order, left on the
// device; the last one feeds the next call. The k positions must fit maxLen; the KV caches grow
// beforehand to the bucket holding all of them. Each k (and KV-cache length) compiles its own
// graph, k times the size of the single step.
func (d *GreedyDecoder) StepsGreedy(tok *tensors.Tensor, k int) ([]*tensors.Tensor, error) {
	return d.steps("StepsGreedy", tok, k)
}

// steps runs k greedy steps from tok (k = 1: the single-step graph, else the k-step one),
// donating the states, and returns the k tokens; name is the public method, for errors.
func (d *GreedyDecoder) steps(name string, tok *tensors.Tensor, k int) ([]*tensors.Tensor, error) {
	if err := d.checkCall(name, tok, k); err != nil {
		return nil, err
	}
	if d.hasAttention && d.pos+k > d.maxLen {
		if k == 1 {
			return nil, fmt.Errorf("bm: GreedyDecoder.%s: position %d is past maxLen %d (the KV-cache length)", name, d.pos, d.maxLen)
		}
		return nil, fmt.Errorf("bm: GreedyDecoder.%s: positions %d to %d go past maxLen %d (the KV-cache length)", name, d.pos, d.pos+k-1, d.maxLen)
	}
	if d.hasAttention && d.pos+k > d.kvLen {
		if err := d.growKV(KVCacheBucket(d.pos+k, d.maxLen)); err != nil {
			return nil, fmt.Errorf("bm: GreedyDecoder.%s: growing the KV caches: %w", name, err)
		}
	}
	var e *context.Exec
	var err error
	if k == 1 {
		e, err = d.greedyExec()
	} else {
		e, err = d.multiExec(k)
	}
	if err != nil {
		return nil, fmt.Errorf("bm: GreedyDecoder.%s: %w", name, err)
	}
	args := []any{tok, int32(d.pos)}
	for i, s := range d.states {
		donated, err := DonateTensorBuffer(s, d.backend, 0)
		if err != nil {
			return nil, fmt.Errorf("bm: GreedyDecoder.%s: donating state %d: %w", name, i, err)
		}
		args = append(args, donated)
	}
	outs, err := e.Exec(args...)
	if err != nil {
		return nil, fmt.Errorf("bm: GreedyDecoder.%s: %w", name, err)
	}
	d.states = outs[k:]
	d.pos += k
	return outs[:k], nil
}

// checkCall checks a call of the method name that feeds tok and runs steps steps: a sequence
// started, a positive number of steps, tokens int32 [batch].
func (d *GreedyDecoder) checkCall(name string, tok *tensors.Tensor, steps int) error {
	if d.states == nil && d.pos == 0 {
		return fmt.Errorf("bm: GreedyDecoder.%s: call Prefill or PrefillGreedy first", name)
	}
	if steps < 1 {
		return fmt.Errorf("bm: GreedyDecoder.%s: the number of steps must be positive, got %d", name, steps)
	}
	if tok == nil || tok.DType() != dtypes.Int32 || tok.Rank() != 1 || tok.Shape().Dim(0) != d.batch {
		shape := "nil"
		if tok != nil {
			shape = tok.Shape().String()
		}
		return fmt.Errorf("bm: GreedyDecoder.%s: tokens must be int32 [%d], got %s", name, d.batch, shape)
	}
	return nil
}

// zeroPrompts returns a prompt of n zeros for every sequence of the batch: what the warm-ups run.
func (d *GreedyDecoder) zeroPrompts(n int) [][]int {
	prompts := make([][]int, d.batch)
	for b := range prompts {
		prompts[b] = make([]int, n)
	}
	return prompts
}

// NextSteps returns how many greedy steps the next call should take (StepsGreedy) so that the
// position never passes limit: with Unroll = k > 1, the steps up to the next multiple of k (so
// that after the first call every call is k steps and ends on a multiple of k), or single steps
// where that would pass limit; 1 without unrolling.
func (d *GreedyDecoder) NextSteps(limit int) int {
	k := d.Unroll
	if k <= 1 {
		return 1
	}
	s := k - d.pos%k
	if d.pos+s > limit {
		return 1
	}
	return s
}

// GenerateGreedy continues one prompt (batch 1) by n greedy tokens on the device and returns
// them; the tokens are copied to the host only after the last step. Steps run Unroll at a time
// (NextSteps).
func (d *GreedyDecoder) GenerateGreedy(prompt []int, n int) ([]int, error) {
	if err := d.checkOneSequence("GreedyDecoder.GenerateGreedy", "n", len(prompt), n); err != nil {
		return nil, err
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
	end := len(prompt) + n - 1 // the position after the last step
	for len(toks) < n {
		next, err := d.StepsGreedy(tok, d.NextSteps(end))
		if err != nil {
			return nil, err
		}
		toks = append(toks, next...)
		tok = next[len(next)-1]
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
// from a prompt of promptLen tokens will run: the prefill and the argmax (for a one-token
// prompt, neither: its token is a greedy step from empty states), and for each KV-cache
// length up to the one holding promptLen+upTo-1 positions the single greedy step and, with
// Unroll = k > 1, the k-step graph and the first call's aligning one (NextSteps), and the cache
// extensions between them. It runs each graph once on scratch states and leaves the decoder
// without a sequence (call PrefillGreedy next).
func (d *GreedyDecoder) WarmUpGreedy(promptLen, upTo int) error {
	if promptLen < 1 || upTo < 1 {
		return fmt.Errorf("bm: GreedyDecoder.WarmUpGreedy: promptLen (%d) and upTo (%d) must be positive", promptLen, upTo)
	}
	last := promptLen + upTo - 1 // positions consumed by the end
	if d.hasAttention && last > d.maxLen {
		return fmt.Errorf("bm: GreedyDecoder.WarmUpGreedy: prompt (%d) + upTo (%d) - 1 exceeds maxLen %d", promptLen, upTo, d.maxLen)
	}
	tok, err := d.PrefillGreedy(d.zeroPrompts(promptLen))
	if err != nil {
		return err
	}
	// The step sizes a generation can call: the first call's aligning one (with unrolling, at
	// the prompt's end), then 1 and the full k.
	first, sizes := 0, []int{1}
	if k := d.Unroll; k > 1 {
		if s := d.NextSteps(last); s > 1 && s < k {
			first = s
		}
		if last-promptLen >= k {
			sizes = append(sizes, k)
		}
	}
	run := func(s int) error {
		next, err := d.StepsGreedy(tok, s)
		tok.FinalizeAll()
		if err != nil {
			return err
		}
		for _, t := range next[:s-1] {
			t.FinalizeAll()
		}
		tok = next[s-1]
		return nil
	}
	if first > 0 {
		if err := run(first); err != nil {
			return err
		}
	}
	if !d.hasAttention {
		for _, s := range sizes {
			if err := run(s); err != nil {
				return err
			}
		}
	} else {
		// Every size in every KV-cache bucket where a generation can call it (a call of s
		// steps from a position at or after the prompt's end that ends within the bucket):
		// place each call so that it ends on the bucket's last position, where StepsGreedy
		// grows the caches to that bucket and runs the graph of that length. The position
		// moves back between the sizes of one bucket (the states are scratch), so that the
		// k-step graph and the single step both run at every length.
		for b := KVCacheBucket(promptLen+1, d.maxLen); ; b = KVCacheBucket(b+1, d.maxLen) {
			for _, s := range sizes {
				if b-s >= promptLen {
					d.pos = b - s
					if err := run(s); err != nil {
						return err
					}
				}
			}
			if b >= KVCacheBucket(last, d.maxLen) {
				break
			}
		}
	}
	if _, err := tensors.CopyFlatData[int32](tok); err != nil {
		return fmt.Errorf("bm: GreedyDecoder.WarmUpGreedy: %w", err)
	}
	tok.FinalizeAll()
	d.dropSequence()
	return nil
}

// Release frees the device memory held by the decoder: the states of the current sequence and
// the compiled graphs. The variables in the context are not touched. The decoder must not be
// used afterwards.
func (d *GreedyDecoder) Release() {
	d.dropSequence()
	if d.greedyStep != nil {
		d.greedyStep.Finalize()
	}
	for _, e := range d.multi {
		e.Finalize()
	}
	for _, e := range d.resident {
		e.Finalize()
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

// GenerateStream is Decoder.Generate with greedy sampling on the device: it continues one
// prompt (batch 1) by up to maxNew tokens and hands each token to onToken (if not nil), in
// order, as soon as it is on the host; onToken stops the generation by returning false. Only
// the tokens (4 bytes each) come back to the host, where Generate copies the whole row of
// logits and takes the argmax there; the tokens are the same. Steps run Unroll at a time
// (NextSteps), so with Unroll = k > 1 the tokens arrive k at a time, and a stop requested by
// onToken leaves the decoder up to k-1 steps past the last token handed over (the sequence
// ends there either way).
func (d *GreedyDecoder) GenerateStream(prompt []int, maxNew int, onToken func(int) bool) ([]int, error) {
	if err := d.checkOneSequence("GreedyDecoder.GenerateStream", "maxNew", len(prompt), maxNew); err != nil {
		return nil, err
	}
	var out []int
	if maxNew <= 0 {
		return out, nil
	}
	tok, err := d.PrefillGreedy([][]int{prompt})
	if err != nil {
		return nil, err
	}
	pending := []*tensors.Tensor{tok} // tokens on the device, not yet handed over
	defer func() {
		for _, t := range pending {
			t.FinalizeAll()
		}
	}()
	end := len(prompt) + maxNew - 1 // the position after the last step
	for {
		for _, t := range pending {
			v, err := tensors.CopyFlatData[int32](t)
			if err != nil {
				return out, fmt.Errorf("bm: GreedyDecoder.GenerateStream: reading token %d: %w", len(out), err)
			}
			out = append(out, int(v[0]))
			if (onToken != nil && !onToken(int(v[0]))) || len(out) == maxNew {
				return out, nil
			}
		}
		next, err := d.StepsGreedy(pending[len(pending)-1], d.NextSteps(end))
		if err != nil {
			return out, err
		}
		for _, t := range pending {
			t.FinalizeAll()
		}
		pending = next
	}
}
