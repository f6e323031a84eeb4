package bm

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Resident greedy decoding: every input of a call lives on the device and is donated to it, and
// the call returns its replacement: the states, the current tokens [B], their position (an
// int32 scalar) and the history [B, maxLen] int32 of the generated tokens, which is read once
// at the end. Nothing goes from the host to the device between calls, and no output is kept
// by the caller while the next call runs.
//
// Why: a batch-1 step of a large model is a few hundred small kernels, and XLA's GPU runtime
// records them into a CUDA graph (its command buffers) that it must update whenever a buffer
// the graph uses has moved (on an H200, about 0.4 ms for the 1.5B step's 220 kernels). With the
// plain greedy calls every call's buffers move: the states come back in new buffers (GoMLX
// declares no input-output aliasing), the position is a new host-to-device buffer, and the
// tokens the caller keeps hold their buffers.
//
// On the XLA backend every output of the resident executable is declared an alias of its input
// (aliasOutputs), so each call writes its states, tokens, position and history into the
// buffers it was given: the addresses never change and one executable serves every call. On
// other backends (no aliasing) two executables of the same graph take turns, so that each sees
// the buffers freed by its previous call; XLA's allocator often, not always, hands those back.

// residentKey names a resident executable: steps per call and which of the turns.
type residentKey struct{ k, turn int }

// residentAliased reports whether the resident executables alias their outputs to their inputs
// (on the XLA backend).
func (d *GreedyDecoder) residentAliased() bool { return d.backend.Name() == "xla" }

// residentTurns is how many executables of each step count take turns: one when aliased, else
// a pair.
func (d *GreedyDecoder) residentTurns() int {
	if d.residentAliased() {
		return 1
	}
	return 2
}

// residentExec returns the executable of k greedy steps for turn (see residentTurns): inputs
// tokens [B] int32, position int32, history [B, maxLen] int32, then the states; outputs the same.
// Each step writes its token into the history at the position it was fed.
func (d *GreedyDecoder) residentExec(k, turn int) (*readOnlyExec, error) {
	key := residentKey{k, turn}
	if e := d.resident[key]; e != nil {
		return e, nil
	}
	cfg, batch, maxLen := d.cfg, d.batch, d.maxLen
	e, err := newReadOnlyExec(d.backend, d.ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		d.built++
		tok, pos, hist, states := inputs[0], inputs[1], inputs[2], inputs[3:]
		g := tok.Graph()
		col := Iota(g, shapes.Make(dtypes.Int32, batch, maxLen), 1)
		states = greedySteps(ctx, cfg, k, tok, pos, states, func(next, p *Node) {
			tok = next
			at := Equal(col, BroadcastToDims(p, batch, maxLen))
			hist = Where(at, BroadcastToDims(Reshape(tok, batch, 1), batch, maxLen), hist)
		})
		outs := append([]*Node{tok, AddScalar(pos, float64(k)), hist}, states...)
		aliased, err := aliasOutputs(inputs[:len(outs)], outs)
		if err != nil {
			panic(err)
		}
		if aliased != d.residentAliased() {
			panic(fmt.Errorf("bm: resident step: aliasing %v on backend %q", aliased, d.backend.Name()))
		}
		return outs
	})
	if err != nil {
		return nil, err
	}
	if d.resident == nil {
		d.resident = map[residentKey]*readOnlyExec{}
	}
	d.resident[key] = e
	return e, nil
}

// GenerateResident continues the sequences from tok [B] int32 (as returned by PrefillGreedy;
// not consumed) by n greedy steps with every input kept on the device (see above), Unroll steps
// per call while they fit and single steps after, and returns the n tokens of each sequence,
// copied to the host once at the end. It gives the tokens StepsGreedy gives. The n positions
// must fit maxLen (the history's length), for every architecture; with attention blocks the KV
// caches grow, bucket by bucket, as the positions reach them.
func (d *GreedyDecoder) GenerateResident(tok *tensors.Tensor, n int) ([][]int32, error) {
	const name = "GreedyDecoder.GenerateResident"
	if err := d.checkCall("GenerateResident", tok, n); err != nil {
		return nil, err
	}
	start, end := d.pos, d.pos+n
	var out [][]int32
	err := d.residentRun(name, tok, n, func(flat func() ([]int32, error), _, to int) (bool, error) {
		if to < end {
			return true, nil
		}
		h, err := flat()
		if err != nil {
			return false, err
		}
		out = d.historyTokens(h, start, end)
		return true, nil
	})
	return out, err
}

// historyTokens returns each sequence's tokens at positions [start, end) of the token history h
// [B, maxLen] copied to the host.
func (d *GreedyDecoder) historyTokens(h []int32, start, end int) [][]int32 {
	out := make([][]int32, d.batch)
	for b := range out {
		out[b] = h[b*d.maxLen+start : b*d.maxLen+end]
	}
	return out
}

// GenerateResidentMarks is GenerateResident that also reads the tokens at marks: after the call
// that makes step m of the n (for each m of marks, increasing, in 1 … n) it copies the token
// history to the host, which waits for the calls launched so far but keeps the calls' pipeline
// (the next calls reuse its buffers: no call of its own, no new executable arguments), and
// hands at m and each sequence's token of step m. The generation is timed at those points as
// it runs. One step per call: Unroll must be at most 1, so that every step ends a call.
func (d *GreedyDecoder) GenerateResidentMarks(tok *tensors.Tensor, n int, marks []int, at func(m int, toks []int32)) ([][]int32, error) {
	const name = "GreedyDecoder.GenerateResidentMarks"
	if err := d.checkCall("GenerateResidentMarks", tok, n); err != nil {
		return nil, err
	}
	if d.Unroll > 1 {
		return nil, fmt.Errorf("bm: %s: marks need one step per call, Unroll is %d", name, d.Unroll)
	}
	for i, m := range marks {
		if m < 1 || m > n || (i > 0 && m <= marks[i-1]) {
			return nil, fmt.Errorf("bm: %s: marks %v must increase within 1 … %d (the steps)", name, marks, n)
		}
	}
	start, end := d.pos, d.pos+n
	var out [][]int32
	next := 0
	err := d.residentRun(name, tok, n, func(flat func() ([]int32, error), _, to int) (bool, error) {
		marked := next < len(marks) && marks[next] == to-start
		if !marked && to < end {
			return true, nil
		}
		h, err := flat()
		if err != nil {
			return false, err
		}
		if marked {
			toks := make([]int32, d.batch)
			for b := range toks {
				toks[b] = h[b*d.maxLen+to-1]
			}
			at(marks[next], toks)
			next++
		}
		if to == end {
			out = d.historyTokens(h, start, end)
		}
		return true, nil
	})
	return out, err
}

// GenerateResidentStream is GenerateStream through the resident steps: it continues one prompt
// (batch 1) by up to maxNew tokens, the first from the prefill and the rest from resident calls
// of Unroll steps (single steps at the end), and hands each token to onToken (if not nil) in
// order, a call's tokens when the call is done: each call copies the token history back to the
// host. onToken stops the generation by returning false, which leaves the decoder up to
// Unroll-1 steps past the last token handed over (more with StreamInterval, which groups the
// copies of several calls). It gives GenerateStream's tokens. The prompt and the tokens must
// fit maxLen, for every architecture.
func (d *GreedyDecoder) GenerateResidentStream(prompt []int, maxNew int, onToken func(int) bool) ([]int, error) {
	const name = "GreedyDecoder.GenerateResidentStream"
	if err := d.checkOneSequence(name, "maxNew", len(prompt), maxNew); err != nil {
		return nil, err
	}
	if last := len(prompt) + maxNew - 1; maxNew > 1 && last > d.maxLen {
		return nil, fmt.Errorf("bm: %s: prompt (%d) + maxNew (%d) - 1 exceeds maxLen %d (the length of the token history)", name, len(prompt), maxNew, d.maxLen)
	}
	var out []int
	if maxNew <= 0 {
		return out, nil
	}
	tok, err := d.PrefillGreedy([][]int{prompt})
	if err != nil {
		return nil, err
	}
	defer tok.FinalizeAll()
	first, err := tensors.CopyFlatData[int32](tok)
	if err != nil {
		return nil, fmt.Errorf("bm: %s: reading the first token: %w", name, err)
	}
	out = append(out, int(first[0]))
	if (onToken != nil && !onToken(out[0])) || maxNew == 1 {
		return out, nil
	}
	end, pending, copied := d.pos+maxNew-1, -1, time.Now()
	err = d.residentRun(name, tok, maxNew-1, func(flat func() ([]int32, error), from, to int) (bool, error) {
		if pending < 0 {
			pending = from
		}
		if to < end && d.StreamInterval > 0 && time.Since(copied) < d.StreamInterval {
			return true, nil // copy later, with the next calls' tokens
		}
		h, err := flat()
		if err != nil {
			return false, err
		}
		copied = time.Now()
		for _, v := range h[pending:to] {
			out = append(out, int(v))
			if (onToken != nil && !onToken(int(v))) || len(out) == maxNew {
				return false, nil
			}
		}
		pending = -1
		return true, nil
	})
	return out, err
}

// residentRun runs n greedy steps from tok [B] int32 (not consumed) with every input kept on the
// device, Unroll steps per call while they fit and single steps after, growing the KV caches
// bucket by bucket as the positions reach them. After each call it calls each with a function
// that copies the token history [B, maxLen] to the host (positions [from, to) are the call's)
// and stops when each returns false or an error.
func (d *GreedyDecoder) residentRun(name string, tok *tensors.Tensor, n int, each func(flat func() ([]int32, error), from, to int) (bool, error)) error {
	start, end := d.pos, d.pos+n
	if end > d.maxLen {
		return fmt.Errorf("bm: %s: positions %d to %d go past maxLen %d (the length of the token history)", name, start, end-1, d.maxLen)
	}
	// The first call reads the caller's tokens without consuming them; after it every input is
	// the previous call's output, donated.
	cur := tok
	owned := false
	posT := tensors.FromScalar(int32(start))
	hist := tensors.FromShape(shapes.Make(dtypes.Int32, d.batch, d.maxLen))
	defer func() {
		if owned {
			cur.FinalizeAll()
		}
		posT.FinalizeAll()
		hist.FinalizeAll()
	}()
	for d.pos < end {
		k := max(1, d.Unroll)
		if d.pos+k > end {
			k = 1
		}
		// Bucket by bucket, so that the growths are those WarmUpResident compiles.
		for d.hasAttention && d.pos+k > d.kvLen {
			if err := d.growKV(KVCacheBucket(d.kvLen+1, d.maxLen)); err != nil {
				return fmt.Errorf("bm: %s: growing the KV caches: %w", name, err)
			}
		}
		e, err := d.residentExec(k, d.turn)
		if err != nil {
			return fmt.Errorf("bm: %s: %w", name, err)
		}
		args := make([]any, 0, 3+len(d.states))
		if owned {
			c, err := DonateTensorBuffer(cur, d.backend, 0)
			if err != nil {
				return fmt.Errorf("bm: %s: donating the tokens: %w", name, err)
			}
			args = append(args, c)
		} else {
			args = append(args, cur)
		}
		for i, t := range append([]*tensors.Tensor{posT, hist}, d.states...) {
			donated, err := DonateTensorBuffer(t, d.backend, 0)
			if err != nil {
				return fmt.Errorf("bm: %s: donating input %d: %w", name, i+1, err)
			}
			args = append(args, donated)
		}
		outs, err := e.Exec(args...)
		// The donated tensors keep a host copy if they had one (the history, once read).
		posT.FinalizeAll()
		hist.FinalizeAll()
		if owned {
			cur.FinalizeAll()
		}
		if err != nil {
			d.states = nil // donated to the failed call
			owned = false  // finalized above, or the caller's
			return fmt.Errorf("bm: %s: %w", name, err)
		}
		cur, posT, hist, d.states = outs[0], outs[1], outs[2], outs[3:]
		owned = true
		from := d.pos
		d.pos += k
		d.turn = (d.turn + 1) % d.residentTurns()
		flat := func() ([]int32, error) {
			h, err := tensors.CopyFlatData[int32](hist)
			if err != nil {
				return nil, fmt.Errorf("bm: %s: reading the token history: %w", name, err)
			}
			return h, nil
		}
		if more, err := each(flat, from, d.pos); err != nil || !more {
			return err
		}
		// The next calls of this executable, launched ahead of the device.
		if m := d.sameCalls(k, end); m > 0 && !d.SyncCalls {
			if start := pipelineFor(d.backend); start != nil {
				more, err := d.pipelineRun(start, e, k, m, append([]*tensors.Tensor{cur, posT, hist}, d.states...), each)
				if err != nil {
					d.states = nil // lost with the failed call; the deferred cleanup frees the other outputs
					return fmt.Errorf("bm: %s: %w", name, err)
				}
				if !more {
					return nil
				}
			}
		}
	}
	return nil
}

// sameCalls returns how many calls of k steps can follow from the current position before end
// without another executable: before a KV cache must grow, with attention blocks.
func (d *GreedyDecoder) sameCalls(k, end int) int {
	limit := end
	if d.hasAttention {
		limit = min(limit, d.kvLen)
	}
	return max(0, (limit-d.pos)/k)
}

// pipelineRun makes up to m further calls of k steps of e (whose last call returned outs: the
// tokens, position, history and states) through a Pipeline, calling each after every call as
// residentRun does. The buffers of outs hold the last call's outputs when it returns without
// an error. It reports whether each asked for more.
func (d *GreedyDecoder) pipelineRun(start PipelineStarter, e *readOnlyExec, k, m int, outs []*tensors.Tensor, each func(flat func() ([]int32, error), from, to int) (bool, error)) (bool, error) {
	g := e.lastGraph()
	if g == nil || g.NumParameters() < len(outs) {
		return false, fmt.Errorf("pipeline: no previous call of the resident executable with its %d outputs", len(outs))
	}
	exec, err := graphExecutable(g)
	if err != nil {
		return false, err
	}
	// The last call's outputs in place of its arguments, then the weights.
	bufs := make([]backends.Buffer, g.NumParameters())
	for i, t := range outs {
		if bufs[i], err = t.Buffer(d.backend, 0); err != nil {
			return false, fmt.Errorf("pipeline: output %d: %w", i, err)
		}
	}
	if err := e.feedVariables(d.backend, g, bufs, nil); err != nil {
		return false, fmt.Errorf("pipeline: %w", err)
	}
	for i, b := range bufs {
		if b == nil {
			return false, fmt.Errorf("pipeline: parameter %d of the resident executable has no buffer", i)
		}
	}
	p, err := start(exec, bufs, len(outs))
	if err != nil {
		return false, fmt.Errorf("pipeline: %w", err)
	}
	flat := func() ([]int32, error) {
		h := make([]int32, d.batch*d.maxLen)
		if err := p.Read(2, unsafe.Slice((*byte)(unsafe.Pointer(&h[0])), 4*len(h))); err != nil {
			return nil, fmt.Errorf("reading the token history: %w", err)
		}
		return h, nil
	}
	more := true
	for range m {
		if err = p.Call(); err != nil {
			break
		}
		d.pipelined++
		from := d.pos
		d.pos += k
		if more, err = each(flat, from, d.pos); err != nil || !more {
			break
		}
	}
	if cerr := p.Close(); cerr != nil {
		return false, fmt.Errorf("pipeline: %w", cerr)
	}
	return more, err
}

// WarmUpResident compiles every executable GenerateResident can call in a generation of upTo
// tokens after a prompt of promptLen tokens, whatever its calls' lengths: those of every turn
// for one step and for Unroll steps, and with attention blocks at every KV-cache length
// the generation can reach. It runs them from a prompt of zeros and leaves the decoder without a
// sequence.
func (d *GreedyDecoder) WarmUpResident(promptLen, upTo int) error {
	const name = "GreedyDecoder.WarmUpResident"
	if promptLen < 1 || upTo < 2 {
		return fmt.Errorf("bm: %s: promptLen (%d) must be positive and upTo (%d) at least 2", name, promptLen, upTo)
	}
	last := promptLen + upTo - 1 // positions consumed by the end
	if last > d.maxLen {
		return fmt.Errorf("bm: %s: prompt (%d) + upTo (%d) - 1 exceeds maxLen %d", name, promptLen, upTo, d.maxLen)
	}
	tok, err := d.PrefillGreedy(d.zeroPrompts(promptLen))
	if err != nil {
		return err
	}
	defer tok.FinalizeAll()
	sizes := []int{1}
	if k := d.Unroll; k > 1 && upTo-1 >= k {
		sizes = append(sizes, k)
	}
	// The KV-cache lengths a generation reaches: the buckets from the one holding the first
	// step's position to the one holding the last (one length, unused, without attention).
	lengths := []int{d.maxLen}
	if d.hasAttention {
		lengths = nil
		for L := KVCacheBucket(promptLen+1, d.maxLen); ; L = KVCacheBucket(2*L, d.maxLen) {
			lengths = append(lengths, L)
			if L >= KVCacheBucket(last, d.maxLen) {
				break
			}
		}
	}
	for _, L := range lengths {
		for d.hasAttention && L > d.kvLen {
			if err := d.growKV(KVCacheBucket(d.kvLen+1, d.maxLen)); err != nil {
				return fmt.Errorf("bm: %s: growing the KV caches: %w", name, err)
			}
		}
		for _, s := range sizes {
			for turn := range d.residentTurns() {
				// The call's steps end on the length's last position (or maxLen's).
				d.pos, d.turn = min(L, d.maxLen)-s, turn
				if _, err := d.GenerateResident(tok, s); err != nil {
					return err
				}
			}
		}
	}
	d.dropSequence()
	return nil
}
