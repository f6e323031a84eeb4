package bm

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Recurrent decoding for every block kind: a prefill graph runs the prompt in parallel and
// returns the per-block states; a step graph advances all blocks by one token. States per block:
//
//	Mamba      conv [B, D, K], ssm [B, D, N] float32 (constant size); with Config.StepFuse
//	           "ring" one state [B, D, C], C = mambaRingWidth (mambaRingStep)
//	attention  k, v [B, H, maxLen, hd] (KV cache, filled up to the current position)
//	MLP, MoE   none
//
// The states stay on the device: each step donates the previous states' buffers to the call
// that replaces them. The KV caches grow in buckets (KVCacheBucket: powers of two from 8, up to
// maxLen), so that an attention step costs O(current length) rather than O(maxLen); each cache
// length compiles its own step graph. Prompt lengths are bucketed: the prefill graph runs the longest bucket
// length that fits (2, 3, 4, 6, 8, 12, 16, 24, …: powers of two and three times powers of
// two) and the remaining prompt tokens go through the step graph, so that at most
// about 2·log₂(maxLen) prefill graphs are ever compiled. A one-token prompt compiles none: its
// token is a step from empty states (zero Mamba states, zero KV caches).

// Decoder generates tokens with a model whose variables are in a context.
type Decoder struct {
	cfg           Config
	backend       backends.Backend
	batch, maxLen int
	hasAttention  bool
	kvStates      []int // indices in states of the attention caches
	ctx           *context.Context
	prefill       map[int]*context.Exec // by KV-cache length
	step          *context.Exec
	extend        map[int]*Exec // grows the KV caches to the key's length
	states        []*tensors.Tensor
	pos           int // tokens consumed so far
	kvLen         int // current KV-cache length
	built         int // graphs built so far (GraphsBuilt)
}

// NewDecoder returns a decoder of batch sequences of at most maxLen tokens (the KV-cache
// length of attention blocks) for the model cfg whose variables are in ctx (variables missing
// from ctx are created with the model's initialisation).
func NewDecoder(backend backends.Backend, ctx *context.Context, cfg Config, batch, maxLen int) (*Decoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if batch < 1 || maxLen < 1 {
		return nil, fmt.Errorf("bm: NewDecoder: batch (%d) and maxLen (%d) must be positive", batch, maxLen)
	}
	d := &Decoder{cfg: cfg, backend: backend, batch: batch, maxLen: maxLen, ctx: ctx.Checked(false),
		prefill: map[int]*context.Exec{}, extend: map[int]*Exec{}}
	n := 0
	for _, b := range cfg.Blocks() {
		switch b.Kind {
		case KindMamba:
			n += mambaStates(cfg)
		case KindAttention:
			d.hasAttention = true
			d.kvStates = append(d.kvStates, n, n+1)
			n += 2
		}
	}
	var err error
	d.step, err = context.NewExec(backend, d.ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		d.built++
		return decodeStepGraph(ctx, cfg, inputs[0], inputs[1], inputs[2:])
	})
	if err != nil {
		return nil, err
	}
	d.step.SetMaxCache(-1)
	return d, nil
}

// KVCacheBucket returns the KV-cache length a decoder with the given maxLen uses to hold n
// tokens: the smallest power of two >= max(n, 8), capped at maxLen.
func KVCacheBucket(n, maxLen int) int {
	b := 8
	for b < n {
		b *= 2
	}
	return min(b, maxLen)
}

// prefillExec returns the prefill executable for caches of kvLen positions.
func (d *Decoder) prefillExec(kvLen int) (*context.Exec, error) {
	if e, ok := d.prefill[kvLen]; ok {
		return e, nil
	}
	e, err := context.NewExec(d.backend, d.ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		d.built++
		return decodePrefillGraph(ctx, d.cfg, inputs[0], kvLen)
	})
	if err != nil {
		return nil, err
	}
	e.SetMaxCache(-1)
	d.prefill[kvLen] = e
	return e, nil
}

// growKV extends the attention caches to newLen positions (zeros after the current ones).
func (d *Decoder) growKV(newLen int) error {
	e, ok := d.extend[newLen]
	if !ok {
		var err error
		e, err = NewExec(d.backend, func(caches []*Node) []*Node {
			d.built++
			out := make([]*Node, len(caches))
			for i, c := range caches {
				out[i] = ExtendKVCache(c, newLen)
			}
			return out
		})
		if err != nil {
			return err
		}
		d.extend[newLen] = e
	}
	args := make([]any, len(d.kvStates))
	for i, j := range d.kvStates {
		donated, err := DonateTensorBuffer(d.states[j], d.backend, 0)
		if err != nil {
			return err
		}
		args[i] = donated
	}
	outs, err := e.Exec(args...)
	if err != nil {
		return err
	}
	for i, j := range d.kvStates {
		d.states[j] = outs[i]
	}
	d.kvLen = newLen
	return nil
}

// GraphsBuilt returns how many graphs the decoder has built so far, each of them one
// compilation: the steps, prefills and cache extensions of every length, and a GreedyDecoder's
// greedy graphs. A generation after a warm-up that covered it leaves the count unchanged.
func (d *Decoder) GraphsBuilt() int { return d.built }

// Pos returns the number of tokens consumed since the last Prefill.
func (d *Decoder) Pos() int { return d.pos }

// PrefillBucket returns the prompt length the prefill graph runs for a prompt of n tokens: the
// largest of 1, 2, 3, 4, 6, 8, 12, 16, 24, … that is <= n.
func PrefillBucket(n int) int {
	best := 1
	for p := 1; p <= n; p *= 2 {
		best = p
		if 3*p/2 <= n && p >= 2 {
			best = 3 * p / 2
		}
	}
	return best
}

// checkPrompts validates the prompts of a new sequence for the method name: batch rows of
// equal length >= 1 (fitting maxLen with attention blocks) and ids in the vocabulary.
func (d *Decoder) checkPrompts(name string, prompts [][]int) error {
	if len(prompts) != d.batch {
		return fmt.Errorf("bm: %s: got %d prompts, decoder batch is %d", name, len(prompts), d.batch)
	}
	L := len(prompts[0])
	for i, p := range prompts {
		if len(p) != L || L == 0 {
			return fmt.Errorf("bm: %s: prompt %d has %d tokens; prompts must be non-empty and of equal length (prompt 0 has %d)", name, i, len(p), L)
		}
		for j, id := range p {
			if id < 0 || id >= d.cfg.Vocab {
				return fmt.Errorf("bm: %s: prompt %d token %d is id %d, outside [0, %d)", name, i, j, id, d.cfg.Vocab)
			}
		}
	}
	if d.hasAttention && L > d.maxLen {
		return fmt.Errorf("bm: %s: prompt of %d tokens exceeds maxLen %d", name, L, d.maxLen)
	}
	return nil
}

// startEmpty discards the current sequence and sets the states of an empty one, from which a
// step consumes the first token: zero conv and SSM states for Mamba blocks, zero KV caches of
// KVCacheBucket(1, maxLen) positions for attention blocks. A one-token prompt starts this way
// rather than through a prefill graph of one token: the values are the same (the decoder
// tests check both against the parallel forward) and the step graph, which the generation
// needs anyway, is the only one to compile.
func (d *Decoder) startEmpty() {
	d.dropSequence()
	d.states = []*tensors.Tensor{}
	if d.hasAttention {
		d.kvLen = KVCacheBucket(1, d.maxLen)
	}
	cfg := d.cfg
	for _, b := range cfg.Blocks() {
		switch b.Kind {
		case KindMamba:
			if mambaStates(cfg) == 1 {
				d.states = append(d.states, tensors.FromShape(shapes.Make(dtypes.Float32, d.batch, cfg.Inner(), mambaRingWidth(cfg))))
				continue
			}
			d.states = append(d.states,
				tensors.FromShape(shapes.Make(dtypes.Float32, d.batch, cfg.Inner(), cfg.ConvKernel)),
				tensors.FromShape(shapes.Make(dtypes.Float32, d.batch, cfg.Inner(), cfg.StateSize)))
		case KindAttention:
			kv := shapes.Make(ComputeDType(cfg), d.batch, cfg.Heads, d.kvLen, cfg.HeadDim())
			d.states = append(d.states, tensors.FromShape(kv), tensors.FromShape(kv))
		}
	}
}

// dropSequence frees the states of the current sequence and leaves the decoder without one.
func (d *Decoder) dropSequence() {
	for _, s := range d.states {
		s.FinalizeAll()
	}
	d.states, d.pos, d.kvLen = nil, 0, 0
}

// checkOneSequence validates a generation of n tokens (named by param in the message) after a
// prompt of promptLen tokens for the method name: a decoder of batch 1, and with attention
// blocks the positions within maxLen.
func (d *Decoder) checkOneSequence(name, param string, promptLen, n int) error {
	if d.batch != 1 {
		return fmt.Errorf("bm: %s needs a decoder of batch 1, this one has batch %d", name, d.batch)
	}
	if d.hasAttention && promptLen+n-1 > d.maxLen {
		return fmt.Errorf("bm: %s: prompt (%d) + %s (%d) - 1 exceeds maxLen %d", name, promptLen, param, n, d.maxLen)
	}
	return nil
}

// Prefill starts new sequences from prompts (batch rows of equal length >= 1) and returns the
// logits [B, V] float32 of their last position. Earlier states are discarded. A one-token
// prompt is a step from empty states (see startEmpty).
func (d *Decoder) Prefill(prompts [][]int) (*tensors.Tensor, error) {
	if err := d.checkPrompts("Decoder.Prefill", prompts); err != nil {
		return nil, err
	}
	L := len(prompts[0])
	if L == 1 {
		d.startEmpty()
		col := make([]int, d.batch)
		for b, p := range prompts {
			col[b] = p[0]
		}
		return d.Step(col)
	}
	d.dropSequence()
	P := PrefillBucket(L)
	if d.hasAttention {
		d.kvLen = KVCacheBucket(P, d.maxLen)
	}
	prefill, err := d.prefillExec(d.kvLen)
	if err != nil {
		return nil, fmt.Errorf("bm: Decoder.Prefill: %w", err)
	}
	ids := make([]int32, 0, d.batch*P)
	for _, p := range prompts {
		for _, id := range p[:P] {
			ids = append(ids, int32(id))
		}
	}
	outs, err := prefill.Exec(tensors.FromFlatDataAndDimensions(ids, d.batch, P))
	if err != nil {
		return nil, fmt.Errorf("bm: Decoder.Prefill: %w", err)
	}
	logits := outs[0]
	d.states, d.pos = outs[1:], P
	col := make([]int, d.batch)
	for t := P; t < L; t++ {
		for b := range prompts {
			col[b] = prompts[b][t]
		}
		logits.FinalizeAll()
		if logits, err = d.Step(col); err != nil {
			return nil, err
		}
	}
	return logits, nil
}

// Step feeds one token per sequence (tokens[b] for row b) and returns the logits [B, V]
// float32 of the next position.
func (d *Decoder) Step(tokens []int) (*tensors.Tensor, error) {
	if d.states == nil && d.pos == 0 {
		return nil, fmt.Errorf("bm: Decoder.Step: call Prefill first")
	}
	if len(tokens) != d.batch {
		return nil, fmt.Errorf("bm: Decoder.Step: got %d tokens, decoder batch is %d", len(tokens), d.batch)
	}
	if d.hasAttention && d.pos >= d.maxLen {
		return nil, fmt.Errorf("bm: Decoder.Step: position %d is past maxLen %d (the KV-cache length)", d.pos, d.maxLen)
	}
	ids := make([]int32, d.batch)
	for i, id := range tokens {
		if id < 0 || id >= d.cfg.Vocab {
			return nil, fmt.Errorf("bm: Decoder.Step: token %d is id %d, outside [0, %d)", i, id, d.cfg.Vocab)
		}
		ids[i] = int32(id)
	}
	if d.hasAttention && d.pos >= d.kvLen {
		if err := d.growKV(KVCacheBucket(d.pos+1, d.maxLen)); err != nil {
			return nil, fmt.Errorf("bm: Decoder.Step: growing the KV caches: %w", err)
		}
	}
	args := []any{tensors.FromFlatDataAndDimensions(ids, d.batch), int32(d.pos)}
	for i, s := range d.states {
		donated, err := DonateTensorBuffer(s, d.backend, 0)
		if err != nil {
			return nil, fmt.Errorf("bm: Decoder.Step: donating state %d: %w", i, err)
		}
		args = append(args, donated)
	}
	outs, err := d.step.Exec(args...)
	if err != nil {
		return nil, fmt.Errorf("bm: Decoder.Step: %w", err)
	}
	d.states = outs[1:]
	d.pos++
	return outs[0], nil
}

// Generate continues one prompt (batch 1) by up to maxNew tokens drawn by s from the logits of
// the real vocabulary (ids < VocabReal). onToken, if not nil, receives each token as soon as
// it is drawn and stops the generation by returning false. It returns the generated tokens.
func (d *Decoder) Generate(prompt []int, maxNew int, s Sampler, onToken func(int) bool) ([]int, error) {
	if err := d.checkOneSequence("Decoder.Generate", "maxNew", len(prompt), maxNew); err != nil {
		return nil, err
	}
	var out []int
	if maxNew <= 0 {
		return out, nil
	}
	logits, err := d.Prefill([][]int{prompt})
	if err != nil {
		return nil, err
	}
	for {
		row, err := tensors.CopyFlatData[float32](logits)
		logits.FinalizeAll()
		if err != nil {
			return out, fmt.Errorf("bm: Decoder.Generate: reading logits: %w", err)
		}
		tok := s.Sample(row[:d.cfg.VocabReal])
		out = append(out, tok)
		if (onToken != nil && !onToken(tok)) || len(out) == maxNew {
			return out, nil
		}
		if logits, err = d.Step([]int{tok}); err != nil {
			return out, err
		}
	}
}

// mambaStates is the number of decoding states of a Mamba block: 1 with Config.StepFuse "ring"
// (mambaRingStep's [B, D, C]), else 2 (conv [B, D, K] and ssm [B, D, N]).
func mambaStates(cfg Config) int {
	if cfg.stepFuses("ring") {
		return 1
	}
	return 2
}

// decodePrefillGraph runs the stack on tokens [B, P] and returns the logits [B, V] of the last
// position followed by the states of the blocks (see the comment at the top of this file);
// attention caches get kvLen positions.
func decodePrefillGraph(ctx *context.Context, cfg Config, tokens *Node, kvLen int) []*Node {
	g := tokens.Graph()
	P := tokens.Shape().Dim(1)
	emb := embeddingTable(ctx, cfg, g)
	x := embed(emb, tokens) // [B, P, d]
	var states []*Node
	x = Residual(ctx, cfg, x, func(_ int, b Block, mctx *context.Context, h *Node) *Node {
		switch b.Kind {
		case KindMamba:
			f, conv, ssm := MambaPrefill(mctx, cfg, h)
			if mambaStates(cfg) == 1 {
				states = append(states, mambaRingState(cfg, conv, ssm, P))
			} else {
				states = append(states, conv, ssm)
			}
			return f
		case KindAttention:
			f, k, v := AttentionPrefill(mctx, cfg, h, kvLen)
			states = append(states, k, v)
			return f
		case KindMLP:
			return MLP(mctx, cfg, h)
		}
		f, _, _ := MoE(mctx, cfg, b.Experts, h, RoutingArgmax)
		return f
	})
	last := Squeeze(SliceAxis(x, 1, AxisElem(P-1)), 1) // [B, d]
	_, logits := headLogits(ctx, cfg, last, emb)
	return append([]*Node{logits}, states...)
}

// decodeStepGraph advances the stack by one token: token [B] int32, pos scalar int32 (the
// position of this token), states as returned by the prefill or a previous step. It returns
// the logits [B, V] followed by the new states.
func decodeStepGraph(ctx *context.Context, cfg Config, token, pos *Node, states []*Node) []*Node {
	g := token.Graph()
	emb := embeddingTable(ctx, cfg, g)
	x := embed(emb, token) // [B, d]
	var next []*Node
	var routed *Node // the router logits of the next MoE block (Config.StepFuse "router")
	blocks := cfg.Blocks()
	// Residual's loop, with each block's input as a stepInput: the raw residual and the norm's
	// 1/rms where the block's first products have gain-folded copies (FoldStepWeights), so
	// that the normed token is never written out; else the normed token.
	for i, b := range blocks {
		lctx := layerScope(ctx, i)
		mctx := lctx.In("mixer")
		in, ok := foldedStepInput(mctx, cfg, x, firstProducts(b.Kind)...)
		if !ok {
			in = normedStepInput(RMSNorm(lctx.In("norm"), x, cfg.NormEps))
		}
		j := len(next) // the states of the blocks, in block order
		var f *Node
		switch b.Kind {
		case KindMamba:
			var rf *routerFold
			if i+1 < len(blocks) && blocks[i+1].Kind == KindMoE {
				rf = newRouterFold(mctx, layerScope(ctx, i+1).In("mixer"), cfg, in, blocks[i+1].Experts)
			}
			if mambaStates(cfg) == 1 {
				// The MoE block after it adds the residual in its last product, unless "nodefer".
				in.deferResidual = i+1 < len(blocks) && blocks[i+1].Kind == KindMoE && !cfg.stepFuses("nodefer")
				var state *Node
				f, state = mambaRingStep(mctx, cfg, in, states[j], pos, rf)
				next = append(next, state)
			} else {
				var conv, ssm *Node
				f, conv, ssm = mambaStep(mctx, cfg, in, states[j], states[j+1], rf)
				next = append(next, conv, ssm)
			}
			if rf != nil {
				routed = rf.logits
			}
		case KindAttention:
			var k, v *Node
			f, k, v = attentionStep(mctx, cfg, in, pos, states[j], states[j+1])
			next = append(next, k, v)
		case KindMLP:
			f = mlpStep(mctx, cfg, in)
		default:
			if !in.rowwise() {
				routed = nil
			}
			f, _ = moeStep(mctx, cfg, b.Experts, in, routed)
			routed = nil
		}
		if in.addsResidual(cfg) {
			x = f // the block's step added its input already (cfg.StepFuse "residual")
		} else {
			x = Add(x, ConvertDType(f, dtypes.Float32))
		}
	}
	var logits *Node
	if cfg.stepFuses("head") {
		_, logits = headLogitsOf(ctx, cfg, layerNormOnePass(ctx.In("decoder").In("final_layernorm"), x, cfg.NormEps), emb)
	} else {
		_, logits = headLogits(ctx, cfg, x, emb)
	}
	return append([]*Node{logits}, next...)
}
