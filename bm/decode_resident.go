package bm

import (
	"fmt"

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
func (d *GreedyDecoder) residentExec(k, turn int) (*context.Exec, error) {
	key := residentKey{k, turn}
	if e := d.resident[key]; e != nil {
		return e, nil
	}
	cfg, batch, maxLen := d.cfg, d.batch, d.maxLen
	e, err := context.NewExec(d.backend, d.ctx, func(ctx *context.Context, inputs []*Node) []*Node {
		d.built++
		tok, pos, hist, states := inputs[0], inputs[1], inputs[2], inputs[3:]
		g := tok.Graph()
		col := Iota(g, shapes.Make(dtypes.Int32, batch, maxLen), 1)
		for i := range k {
			p := pos
			if i > 0 {
				p = AddScalar(pos, float64(i))
			}
			outs := decodeStepGraph(ctx, cfg, tok, p, states)
			tok, states = greedyArgmax(cfg, outs[0]), outs[1:]
			at := Equal(col, BroadcastToDims(p, batch, maxLen))
			hist = Where(at, BroadcastToDims(Reshape(tok, batch, 1), batch, maxLen), hist)
		}
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
	e.SetMaxCache(-1)
	if d.resident == nil {
		d.resident = map[residentKey]*context.Exec{}
	}
	d.resident[key] = e
	return e, nil
}

// GenerateResident continues the sequences from tok [B] int32 (as returned by PrefillGreedy;
// not consumed) by n greedy steps with every input kept on the device (see above), Unroll steps
// per call while they fit and single steps after, and returns the n tokens of each sequence,
// copied to the host once at the end. It gives the tokens StepsGreedy gives. The n positions
// must fit maxLen (the history's length), for every architecture; with attention blocks the KV
// caches first grow, bucket by bucket, to the one that holds them all.
func (d *GreedyDecoder) GenerateResident(tok *tensors.Tensor, n int) ([][]int32, error) {
	const name = "GreedyDecoder.GenerateResident"
	if err := d.checkCall("GenerateResident", tok, n); err != nil {
		return nil, err
	}
	start, end := d.pos, d.pos+n
	if end > d.maxLen {
		return nil, fmt.Errorf("bm: %s: positions %d to %d go past maxLen %d (the length of the token history)", name, start, end-1, d.maxLen)
	}
	// Bucket by bucket, so that the growths are those WarmUpResident compiles.
	for d.hasAttention && end > d.kvLen {
		if err := d.growKV(KVCacheBucket(d.kvLen+1, d.maxLen)); err != nil {
			return nil, fmt.Errorf("bm: %s: growing the KV caches: %w", name, err)
		}
	}
	// The first call reads the caller's tokens without consuming them; after it every input is
	// the previous call's output, donated.
	cur := tok
	owned := false
	posT := tensors.FromScalar(int32(start))
	hist := tensors.FromShape(shapes.Make(dtypes.Int32, d.batch, d.maxLen))
	release := func() {
		if owned {
			cur.FinalizeAll()
		}
		posT.FinalizeAll()
		hist.FinalizeAll()
	}
	for d.pos < end {
		k := max(1, d.Unroll)
		if d.pos+k > end {
			k = 1
		}
		e, err := d.residentExec(k, d.turn)
		if err != nil {
			release()
			return nil, fmt.Errorf("bm: %s: %w", name, err)
		}
		args := make([]any, 0, 3+len(d.states))
		if owned {
			c, err := DonateTensorBuffer(cur, d.backend, 0)
			if err != nil {
				release()
				return nil, fmt.Errorf("bm: %s: donating the tokens: %w", name, err)
			}
			args = append(args, c)
		} else {
			args = append(args, cur)
		}
		for i, t := range append([]*tensors.Tensor{posT, hist}, d.states...) {
			donated, err := DonateTensorBuffer(t, d.backend, 0)
			if err != nil {
				release()
				return nil, fmt.Errorf("bm: %s: donating input %d: %w", name, i+1, err)
			}
			args = append(args, donated)
		}
		outs, err := e.Exec(args...)
		if err != nil {
			d.states = nil // donated to the failed call
			return nil, fmt.Errorf("bm: %s: %w", name, err)
		}
		cur, posT, hist, d.states = outs[0], outs[1], outs[2], outs[3:]
		owned = true
		d.pos += k
		d.turn = (d.turn + 1) % d.residentTurns()
	}
	defer release()
	flat, err := tensors.CopyFlatData[int32](hist)
	if err != nil {
		return nil, fmt.Errorf("bm: %s: reading the token history: %w", name, err)
	}
	out := make([][]int32, d.batch)
	for b := range out {
		out[b] = flat[b*d.maxLen+start : b*d.maxLen+end]
	}
	return out, nil
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
