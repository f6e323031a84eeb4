package eval

import (
	"errors"
	"fmt"
	"io"
	"math"

	"blackmamba/bm"
	"blackmamba/bm/data"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// ModelScorer scores requests with a bm model whose variables are in a context, on a backend.
//
// Requests are packed into batches of BatchSize rows; each row holds a context followed by its
// continuation, right-padded to a bucketed length (powers of two from MinBucket, capped at the
// model's MaxSeqLen), so that at most about log₂(MaxSeqLen) graphs are compiled. A sequence
// longer than MaxSeqLen+1 tokens loses tokens from the left of its context; the continuation is
// always kept whole. Log-probabilities are taken over the real vocabulary (ids < VocabReal).
type ModelScorer struct {
	Cfg       bm.Config
	BatchSize int // rows per compiled graph; requests beyond it are scored in several calls
	MinBucket int // shortest padded length; 32 when 0
	MaxLen    int // longest input length; cfg.MaxSeqLen when 0

	model *bm.Model
	exec  *context.Exec
}

// NewModelScorer returns a scorer for the model cfg whose variables are already in ctx. The
// graph is built with ctx.Reuse(), so a variable missing from ctx is an error, not a fresh
// initialisation.
func NewModelScorer(backend backends.Backend, ctx *context.Context, cfg bm.Config, batchSize int) (*ModelScorer, error) {
	m, err := bm.New(cfg)
	if err != nil {
		return nil, err
	}
	if batchSize <= 0 {
		return nil, fmt.Errorf("eval: NewModelScorer: batch size %d must be positive", batchSize)
	}
	s := &ModelScorer{Cfg: cfg, BatchSize: batchSize, model: m}
	s.exec, err = context.NewExec(backend, ctx.Reuse(), s.graph)
	if err != nil {
		return nil, err
	}
	s.exec.SetMaxCache(-1)
	return s, nil
}

// graph computes, for inputs tokens [B, L] int32, targets [B, L] int32 and mask [B, L] float32,
// the per-row sum of log p(target | prefix) over masked positions [B] float32 and whether every
// masked target is the argmax of its logits [B] bool.
func (s *ModelScorer) graph(ctx *context.Context, tokens, targets, mask *Node) (logLik, greedy *Node) {
	g := tokens.Graph()
	out := s.model.Forward(ctx, tokens, bm.ForwardOptions{Routing: bm.RoutingArgmax})
	logits := out.Logits // [B, L, V]
	B, L, V := logits.Shape().Dim(0), logits.Shape().Dim(1), logits.Shape().Dim(2)
	vr := s.Cfg.VocabReal
	flat := Reshape(logits, B*L, V)
	if vr < V {
		flat = Slice(flat, AxisRange(), AxisRange(0, vr))
	}
	M := B * L
	mx := ReduceAndKeep(flat, ReduceMax, -1)                           // [M, 1]
	lse := Add(Log(ReduceSum(Exp(Sub(flat, mx)), -1)), Reshape(mx, M)) // [M]
	rows := Iota(g, shapes.Make(dtypes.Int32, M, 1), 0)
	tg := Reshape(ConvertDType(targets, dtypes.Int32), M, 1)
	tlogit := Gather(flat, Concatenate([]*Node{rows, tg}, 1)) // [M]
	lp := Reshape(Sub(tlogit, lse), B, L)
	logLik = ReduceSum(Mul(lp, mask), -1)
	am := Reshape(ConvertDType(ArgMax(flat, -1), dtypes.Int32), B, L)
	hit := LogicalOr(Equal(am, ConvertDType(targets, dtypes.Int32)), Equal(mask, ZerosLike(mask)))
	greedy = Equal(ReduceMin(ConvertDType(hit, dtypes.Float32), -1), Ones(g, shapes.Make(dtypes.Float32)))
	return logLik, greedy
}

// bucket returns the padded length for n input positions.
func (s *ModelScorer) bucket(n, maxLen int) int {
	b := s.MinBucket
	if b <= 0 {
		b = 32
	}
	for b < n {
		b *= 2
	}
	return min(b, maxLen)
}

func (s *ModelScorer) maxLen() int {
	if s.MaxLen > 0 {
		return s.MaxLen
	}
	if s.Cfg.MaxSeqLen > 0 {
		return s.Cfg.MaxSeqLen
	}
	return 2048
}

// checkIDs reports the first id of ids outside the model's real vocabulary.
func (s *ModelScorer) checkIDs(ids []int, what string) error {
	for _, id := range ids {
		if id < 0 || id >= s.Cfg.VocabReal {
			return fmt.Errorf("eval: %s: tokenizer id %d outside the model's vocabulary %d", what, id, s.Cfg.VocabReal)
		}
	}
	return nil
}

// Score implements Scorer.
func (s *ModelScorer) Score(reqs []Request) ([]Score, error) {
	out := make([]Score, 0, len(reqs))
	for lo := 0; lo < len(reqs); lo += s.BatchSize {
		hi := min(lo+s.BatchSize, len(reqs))
		got, err := s.scoreBatch(reqs[lo:hi], lo)
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
	}
	return out, nil
}

// scoreBatch scores at most BatchSize requests; first is the index of reqs[0] for messages.
func (s *ModelScorer) scoreBatch(reqs []Request, first int) ([]Score, error) {
	maxLen := s.maxLen()
	seqs := make([][]int, len(reqs))
	conts := make([]int, len(reqs))
	longest := 1
	for i, r := range reqs {
		what := fmt.Sprintf("request %d", first+i)
		if len(r.Continuation) == 0 {
			return nil, fmt.Errorf("eval: %s has an empty continuation", what)
		}
		if len(r.Context) == 0 {
			return nil, fmt.Errorf("eval: %s has an empty context (use the end-of-text id 0)", what)
		}
		if len(r.Continuation) > maxLen {
			return nil, fmt.Errorf("eval: %s: continuation of %d tokens is longer than the model's maximum length %d", what, len(r.Continuation), maxLen)
		}
		if err := s.checkIDs(r.Context, what+" context"); err != nil {
			return nil, err
		}
		if err := s.checkIDs(r.Continuation, what+" continuation"); err != nil {
			return nil, err
		}
		seq := append(append([]int(nil), r.Context...), r.Continuation...)
		if len(seq) > maxLen+1 {
			seq = seq[len(seq)-maxLen-1:] // left-truncate the context
		}
		seqs[i], conts[i] = seq, len(r.Continuation)
		longest = max(longest, len(seq)-1)
	}
	L := s.bucket(longest, maxLen)
	B := s.BatchSize
	tok := make([]int32, B*L)
	tgt := make([]int32, B*L)
	mask := make([]float32, B*L)
	for i, seq := range seqs {
		n := len(seq) - 1
		for t := 0; t < n; t++ {
			tok[i*L+t] = int32(seq[t])
			tgt[i*L+t] = int32(seq[t+1])
			if t >= n-conts[i] {
				mask[i*L+t] = 1
			}
		}
	}
	ll, gr, err := s.run(tok, tgt, mask, B, L)
	if err != nil {
		return nil, err
	}
	res := make([]Score, len(reqs))
	for i := range res {
		res[i] = Score{LogLik: float64(ll[i]), Greedy: gr[i]}
	}
	return res, nil
}

// run executes the graph on row-major [B, L] inputs.
func (s *ModelScorer) run(tok, tgt []int32, mask []float32, B, L int) ([]float32, []bool, error) {
	outs, err := s.exec.Exec(tensors.FromFlatDataAndDimensions(tok, B, L),
		tensors.FromFlatDataAndDimensions(tgt, B, L), tensors.FromFlatDataAndDimensions(mask, B, L))
	if err != nil {
		return nil, nil, fmt.Errorf("eval: scoring a [%d, %d] batch: %w", B, L, err)
	}
	defer func() {
		for _, o := range outs {
			o.FinalizeAll()
		}
	}()
	ll, err := tensors.CopyFlatData[float32](outs[0])
	if err != nil {
		return nil, nil, err
	}
	gr, err := tensors.CopyFlatData[bool](outs[1])
	if err != nil {
		return nil, nil, err
	}
	return ll, gr, nil
}

// WindowsPerplexity returns the perplexity exp(−Σ log p / count) of next-token prediction over
// token windows read from next until io.EOF: each call returns a row-major [rows, T+1] slice
// (rows <= BatchSize); every window predicts its tokens 1..T from the preceding ones. It also
// returns the number of predicted tokens.
func (s *ModelScorer) WindowsPerplexity(next func() ([]int32, error), T int) (ppl float64, count int64, err error) {
	if T <= 0 || T > s.maxLen() {
		return 0, 0, fmt.Errorf("eval: window length %d must be in [1, %d]", T, s.maxLen())
	}
	B := s.BatchSize
	var sum float64
	for {
		w, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, 0, err
		}
		if len(w)%(T+1) != 0 || len(w)/(T+1) > B {
			return 0, 0, fmt.Errorf("eval: a batch of %d tokens is not at most %d windows of %d tokens", len(w), B, T+1)
		}
		rows := len(w) / (T + 1)
		tok := make([]int32, B*T)
		tgt := make([]int32, B*T)
		mask := make([]float32, B*T)
		for r := range rows {
			win := w[r*(T+1) : (r+1)*(T+1)]
			for t, id := range win {
				if id < 0 || int(id) >= s.Cfg.VocabReal {
					return 0, 0, fmt.Errorf("eval: token %d of window %d: tokenizer id %d outside the model's vocabulary %d", t, r, id, s.Cfg.VocabReal)
				}
			}
			for t := range T {
				tok[r*T+t], tgt[r*T+t], mask[r*T+t] = win[t], win[t+1], 1
			}
		}
		ll, _, err := s.run(tok, tgt, mask, B, T)
		if err != nil {
			return 0, 0, err
		}
		for r := range rows {
			sum += float64(ll[r])
		}
		count += int64(rows * T)
	}
	if count == 0 {
		return 0, 0, fmt.Errorf("eval: no windows to compute a perplexity on")
	}
	return math.Exp(-sum / float64(count)), count, nil
}

// DomainPerplexity is the held-out perplexity of one corpus domain.
type DomainPerplexity struct {
	Domain     string  `json:"domain"`
	Perplexity float64 `json:"perplexity"`
	Tokens     int64   `json:"tokens"`
}

// HeldOutPerplexity computes the perplexity of each domain's held-out split of corpus in
// windows of seqLen+1 tokens (at most maxWindows per domain when maxWindows > 0), calling
// progress (if not nil) after each domain.
func (s *ModelScorer) HeldOutPerplexity(corpus *data.Corpus, seqLen int, maxWindows int64, progress func(d DomainPerplexity)) ([]DomainPerplexity, error) {
	var res []DomainPerplexity
	for _, dom := range corpus.Domains() {
		l := corpus.HeldOut(dom, seqLen, s.BatchSize)
		var read int64
		next := func() ([]int32, error) {
			if maxWindows > 0 && read >= maxWindows {
				return nil, io.EOF
			}
			w, err := l.Next()
			if err != nil {
				return nil, err
			}
			rows := int64(len(w) / (seqLen + 1))
			if maxWindows > 0 && read+rows > maxWindows {
				rows = maxWindows - read
				w = w[:rows*int64(seqLen+1)]
			}
			read += rows
			return w, nil
		}
		ppl, n, err := s.WindowsPerplexity(next, seqLen)
		if err != nil {
			return res, fmt.Errorf("eval: domain %q: %w", dom, err)
		}
		d := DomainPerplexity{Domain: dom, Perplexity: ppl, Tokens: n}
		res = append(res, d)
		if progress != nil {
			progress(d)
		}
	}
	return res, nil
}
