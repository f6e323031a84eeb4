// Package balance measures how evenly the MoE blocks of a trained model spread tokens over
// their experts (the paper's expert-balance figure): tokens per expert of each MoE block on
// held-out text, routed with inference argmax and with the model's training-time router, plus
// summary statistics (shares, coefficient of variation, entropy) and plots.
package balance

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"

	"blackmamba/bm"
	"blackmamba/experiments/results"
	"blackmamba/experiments/train"

	"github.com/gomlx/gomlx/backends"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// ModeArgmax is the Result.Mode of inference routing (top-1 router logit, no balancing).
const ModeArgmax = bm.RoutingArgmax

// DomainAll is the Result.Domain of the counts summed over all held-out domains.
const DomainAll = "all"

// LayerStats summarizes the tokens per expert of one MoE block.
type LayerStats struct {
	Layer  int       `json:"layer"`  // block index in cfg.Blocks()
	Counts []float64 `json:"counts"` // [E] tokens routed to each expert
	// MaxShare and MinShare are the largest and smallest fraction of the tokens that one expert
	// received (1/E each when balanced).
	MaxShare float64 `json:"max_share"`
	MinShare float64 `json:"min_share"`
	// CV is the coefficient of variation std/mean of Counts (population std): 0 when balanced.
	CV float64 `json:"cv"`
	// Entropy is −Σ p_e ln p_e of the shares in nats, at most ln E; NormEntropy is Entropy/ln E
	// (1 when balanced, 0 when one expert gets everything; 1 for a single expert).
	Entropy     float64 `json:"entropy"`
	NormEntropy float64 `json:"norm_entropy"`
	// UnderHalf is the fraction of experts that received less than half their fair share
	// (total/E/2 tokens).
	UnderHalf float64 `json:"under_half"`
}

// Result is the routing statistics of one model, routing mode and held-out domain.
type Result struct {
	Model string `json:"model"`
	// Routing is the training-time routing of the model's config (bm.Routing* constants).
	Routing string `json:"routing"`
	// Mode is the routing used for the counts: ModeArgmax (inference) or the training-time
	// router (cfg.Routing). For bm.RoutingSwitch the training route is the top-1 of the router
	// softmax, which picks the same experts as argmax: both modes give the same counts.
	Mode string `json:"mode"`
	// Domain is the held-out domain, or DomainAll for the sum over domains.
	Domain string `json:"domain"`
	// Tokens is the number of token positions routed (each goes through every MoE block).
	Tokens int          `json:"tokens"`
	Layers []LayerStats `json:"layers"`
}

// Stats computes the balance statistics of counts [E] (tokens per expert) of block layer.
// With no tokens at all the shares, CV and entropies are NaN.
func Stats(layer int, counts []float64) LayerStats {
	s := LayerStats{Layer: layer, Counts: append([]float64(nil), counts...)}
	E := len(counts)
	var total float64
	for _, c := range counts {
		total += c
	}
	if E == 0 || total <= 0 {
		nan := math.NaN()
		s.MaxShare, s.MinShare, s.CV, s.Entropy, s.NormEntropy, s.UnderHalf = nan, nan, nan, nan, nan, nan
		return s
	}
	s.MaxShare, s.MinShare = math.Inf(-1), math.Inf(1)
	fair := total / float64(E)
	under := 0
	for _, c := range counts {
		p := c / total
		s.MaxShare = math.Max(s.MaxShare, p)
		s.MinShare = math.Min(s.MinShare, p)
		if p > 0 {
			s.Entropy -= p * math.Log(p)
		}
		if c < fair/2 {
			under++
		}
	}
	s.CV = results.CoefficientOfVariation(counts)
	if E > 1 {
		s.NormEntropy = s.Entropy / math.Log(float64(E))
	} else {
		s.NormEntropy = 1
	}
	s.UnderHalf = float64(under) / float64(E)
	return s
}

// MeanCV returns the mean over layers of the coefficient of variation.
func (r Result) MeanCV() float64 {
	if len(r.Layers) == 0 {
		return math.NaN()
	}
	var s float64
	for _, l := range r.Layers {
		s += l.CV
	}
	return s / float64(len(r.Layers))
}

// Modes returns the routing modes Analyze measures for cfg: argmax, then cfg.Routing when it
// differs.
func Modes(cfg bm.Config) []string {
	modes := []string{ModeArgmax}
	if cfg.Routing != "" && cfg.Routing != ModeArgmax {
		modes = append(modes, cfg.Routing)
	}
	return modes
}

// moeBlocks returns the block indices of the MoE blocks of cfg.
func moeBlocks(cfg bm.Config) []int {
	var idx []int
	for i, b := range cfg.Blocks() {
		if b.Kind == bm.KindMoE {
			idx = append(idx, i)
		}
	}
	return idx
}

// seqLener is implemented by batch sources that know their window length T.
type seqLener interface{ SeqLen() int }

// WithSeqLen returns b with its window length T declared, for sources of batches [B, T+1]
// whose T differs from the config's MaxSeqLen and that have no SeqLen method.
func WithSeqLen(b train.Batches, seqLen int) train.Batches { return sized{b, seqLen} }

type sized struct {
	train.Batches
	seqLen int
}

func (s sized) SeqLen() int { return s.seqLen }

// batchShape returns B and T of a flattened [B, T+1] batch of n tokens.
func batchShape(domain string, b train.Batches, cfg bm.Config, n int) (B, T int, err error) {
	T = cfg.MaxSeqLen
	if s, ok := b.(seqLener); ok {
		T = s.SeqLen()
	}
	if T < 1 || n%(T+1) != 0 {
		return 0, 0, fmt.Errorf("balance: held-out %q: batch of %d tokens is not [B, T+1] with T=%d "+
			"(T is the source's SeqLen(), else the config's max_seq_len; declare it with WithSeqLen)", domain, n, T)
	}
	return n / (T + 1), T, nil
}

// Analyze routes nBatches batches of each held-out domain through the model whose variables are
// in ctx (cfg its configuration), once per mode of Modes(cfg), and sums the tokens per expert
// of each MoE block. Each batch is a flattened [B, T+1] window; its first T tokens are the input
// (T from the source's SeqLen() method when it has one, see WithSeqLen, else cfg.MaxSeqLen). Results come per mode
// for each domain (sorted) and then for DomainAll. The loaders are put back where they were.
func Analyze(backend backends.Backend, ctx *context.Context, cfg bm.Config, heldOut map[string]train.Batches, nBatches int) ([]Result, error) {
	if nBatches < 1 {
		return nil, fmt.Errorf("balance: nBatches %d must be >= 1", nBatches)
	}
	if len(heldOut) == 0 {
		return nil, fmt.Errorf("balance: no held-out data")
	}
	model, err := bm.New(cfg)
	if err != nil {
		return nil, err
	}
	layers := moeBlocks(cfg)
	if len(layers) == 0 {
		return nil, fmt.Errorf("balance: model %q (pattern %q) has no MoE block", cfg.Name, cfg.Pattern)
	}
	domains := make([]string, 0, len(heldOut))
	for d := range heldOut {
		domains = append(domains, d)
	}
	sort.Strings(domains)

	var out []Result
	for _, mode := range Modes(cfg) {
		exec, err := context.NewExec(backend, ctx.Reuse(), func(ctx *context.Context, tokens *Node) []*Node {
			// The graph also returns the logits' sum (dropped on the host): on the pure-Go
			// backend a graph that leaves the head out fails at run time.
			o := model.Forward(ctx, tokens, bm.ForwardOptions{Routing: mode})
			return append(o.ExpertCounts, ReduceAllSum(o.Logits))
		})
		if err != nil {
			return nil, fmt.Errorf("balance: building the %s routing graph: %w", mode, err)
		}
		all := Result{Model: cfg.Name, Routing: cfg.Routing, Mode: mode, Domain: DomainAll}
		allCounts := make([][]float64, len(layers))
		for _, d := range domains {
			counts, tokens, err := countDomain(exec, cfg, d, heldOut[d], nBatches)
			if err != nil {
				exec.Finalize()
				return nil, err
			}
			r := Result{Model: cfg.Name, Routing: cfg.Routing, Mode: mode, Domain: d, Tokens: tokens}
			for j, c := range counts {
				r.Layers = append(r.Layers, Stats(layers[j], c))
				allCounts[j] = addCounts(allCounts[j], c)
			}
			all.Tokens += tokens
			out = append(out, r)
		}
		exec.Finalize()
		for j, c := range allCounts {
			all.Layers = append(all.Layers, Stats(layers[j], c))
		}
		out = append(out, all)
	}
	return out, nil
}

func addCounts(dst, src []float64) []float64 {
	if dst == nil {
		dst = make([]float64, len(src))
	}
	for i, v := range src {
		dst[i] += v
	}
	return dst
}

// countDomain runs nBatches of b through exec and restores b's position afterwards.
func countDomain(exec *context.Exec, cfg bm.Config, domain string, b train.Batches, nBatches int) (counts [][]float64, tokens int, err error) {
	state := b.State()
	defer func() {
		if rerr := b.Restore(state); rerr != nil && err == nil {
			err = fmt.Errorf("balance: held-out %q: restoring the loader: %w", domain, rerr)
		}
	}()
	for i := 0; i < nBatches; i++ {
		flat, err := b.Next()
		if err != nil {
			return nil, 0, fmt.Errorf("balance: held-out %q batch %d: %w", domain, i, err)
		}
		B, T, err := batchShape(domain, b, cfg, len(flat))
		if err != nil {
			return nil, 0, err
		}
		inputs := make([]int32, 0, B*T)
		for r := 0; r < B; r++ {
			row := flat[r*(T+1) : r*(T+1)+T]
			for k, id := range row {
				if id < 0 || int(id) >= cfg.Vocab {
					return nil, 0, fmt.Errorf("balance: held-out %q batch %d row %d position %d: token id %d outside the vocabulary [0, %d)", domain, i, r, k, id, cfg.Vocab)
				}
			}
			inputs = append(inputs, row...)
		}
		t := tensors.FromFlatDataAndDimensions(inputs, B, T)
		var res []*tensors.Tensor
		err = catch(func() error {
			var e error
			res, e = exec.Exec(t)
			return e
		})
		t.FinalizeAll()
		if err != nil {
			return nil, 0, fmt.Errorf("balance: held-out %q batch %d: %w", domain, i, err)
		}
		if counts == nil {
			counts = make([][]float64, len(res)-1) // the last output is the logits' sum
		}
		for j, r := range res {
			if j < len(counts) {
				counts[j] = addCounts(counts[j], intsToFloats(r))
			}
			r.FinalizeAll()
		}
		tokens += B * T
	}
	return counts, tokens, nil
}

func intsToFloats(t *tensors.Tensor) []float64 {
	var out []float64
	tensors.ConstFlatData(t, func(flat []int32) {
		out = make([]float64, len(flat))
		for i, v := range flat {
			out[i] = float64(v)
		}
	})
	return out
}

// catch turns a panic of graph building or execution into an error.
func catch(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = e
			} else {
				err = fmt.Errorf("%v", r)
			}
		}
	}()
	return fn()
}

// RouteText runs the token ids through the model (variables in ctx) with inference routing and
// returns, per MoE block in order, the expert chosen for each token: [layers][len(ids)].
func RouteText(backend backends.Backend, ctx *context.Context, cfg bm.Config, ids []int) ([][]int, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("balance: RouteText: no tokens")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tok := make([]int32, len(ids))
	for i, id := range ids {
		if id < 0 || id >= cfg.Vocab {
			return nil, fmt.Errorf("balance: RouteText: token %d: id %d outside the vocabulary [0, %d)", i, id, cfg.Vocab)
		}
		tok[i] = int32(id)
	}
	var choices [][]int
	err := catch(func() error {
		exec, err := context.NewExec(backend, ctx.Reuse(), func(ctx *context.Context, tokens *Node) []*Node {
			return routeChoices(ctx, cfg, tokens)
		})
		if err != nil {
			return err
		}
		defer exec.Finalize()
		t := tensors.FromFlatDataAndDimensions(tok, 1, len(tok))
		defer t.FinalizeAll()
		res, err := exec.Exec(t)
		if err != nil {
			return err
		}
		res[len(res)-1].FinalizeAll() // the logits' sum
		for _, r := range res[:len(res)-1] {
			var row []int
			tensors.ConstFlatData(r, func(flat []int32) {
				row = make([]int, len(flat))
				for i, v := range flat {
					row[i] = int(v)
				}
			})
			choices = append(choices, row)
			r.FinalizeAll()
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("balance: RouteText: %w", err)
	}
	return choices, nil
}

// routeChoices runs the model on tokens [B, T] with argmax routing and returns each MoE
// block's choices [B·T] int32, plus the sum of the logits (the pure-Go backend needs every
// computed branch to reach an output).
func routeChoices(ctx *context.Context, cfg bm.Config, tokens *Node) []*Node {
	out := (&bm.Model{Cfg: cfg}).Forward(ctx, tokens, bm.ForwardOptions{Routing: bm.RoutingArgmax})
	return append(out.Choices, ReduceAllSum(out.Logits))
}

// WriteJSON writes results as indented JSON to path.
func WriteJSON(path string, rs []Result) error {
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return fmt.Errorf("balance: encoding results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("balance: %w", err)
	}
	return nil
}

// ReadJSON reads results written by WriteJSON. Errors name the file and what is wrong. ReadAny
// also reads the result file of the balance experiment.
func ReadJSON(path string) ([]Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("balance: %w", err)
	}
	var rs []Result
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("balance: %s: malformed results: %w", path, err)
	}
	if err := checkResults(path, "", rs); err != nil {
		return nil, err
	}
	return rs, nil
}
