package bench

import (
	"fmt"
	"math/rand/v2"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
)

// Breakdown times the pieces of a training step of cfg at [batch, seqLen] one by one, forward
// and forward+backward (gradients of the input and of every weight), so that the time of a full
// step can be attributed: one pre-norm residual block of each kind the config uses (Mamba, MoE
// with the config's training routing and with argmax, dense MLP, attention), the selective scan
// alone at the mixer's shape, and the embedding, final norm, tied head and cross-entropy. Each
// row carries Extra["count"], the number of such blocks in the model, and Extra["step_share_ms"]
// = count × time (for fwd+bwd rows), which summed over the rows estimates the step without the
// optimizer update.
func Breakdown(backend backends.Backend, cfg bm.Config, batch, seqLen, reps int) []Row {
	d := cfg.Dim
	n := batch * seqLen
	rng := rand.New(rand.NewPCG(11, uint64(n)))
	randT := func(dims ...int) *tensors.Tensor { return bm.RandomTensor(rng, 1, dims...) }
	xT := randT(batch, seqLen, d)
	wT := randT(batch, seqLen, d)
	toks := make([]int32, batch*(seqLen+1))
	for i := range toks {
		toks[i] = int32(rng.IntN(cfg.VocabReal))
	}
	tokT := tensors.FromFlatDataAndDimensions(toks, batch, seqLen+1)

	counts := map[byte]int{}
	experts := 0
	for _, b := range cfg.Blocks() {
		counts[b.Kind]++
		if b.Kind == bm.KindMoE {
			experts = b.Experts
		}
	}
	// Every piece maps its inputs to a scalar loss; the backward pass differentiates it with
	// respect to the float inputs and every trainable variable.
	type piece struct {
		name   string
		count  int
		inputs []*tensors.Tensor
		loss   func(ctx *context.Context, in []*Node) (loss *Node, wrt []*Node)
	}
	block := func(name string, count int, mixer func(ctx *context.Context, h *Node) *Node) piece {
		return piece{name: name, count: count, inputs: []*tensors.Tensor{xT, wT},
			loss: func(ctx *context.Context, in []*Node) (*Node, []*Node) {
				x := in[0]
				h := bm.RMSNorm(ctx.In("norm"), x, cfg.NormEps)
				out := Add(x, ConvertDType(mixer(ctx.In("mixer"), h), dtypes.Float32))
				return ReduceAllSum(Mul(out, in[1])), []*Node{x}
			}}
	}
	var pieces []piece
	if c := counts[bm.KindMamba]; c > 0 {
		pieces = append(pieces, block("Mamba block", c, func(ctx *context.Context, h *Node) *Node {
			return bm.Mamba(ctx, cfg, h)
		}))
		D, N := cfg.Inner(), cfg.StateSize
		pieces = append(pieces, piece{
			name: fmt.Sprintf("  selective scan alone (D=%d N=%d)", D, N), count: 0,
			inputs: []*tensors.Tensor{randT(batch, seqLen, D), randT(batch, seqLen, D), randT(batch, seqLen, N),
				randT(batch, seqLen, N), randT(batch, seqLen, D)},
			loss: func(ctx *context.Context, in []*Node) (*Node, []*Node) {
				g := in[0].Graph()
				aLog := ctx.WithInitializer(func(g *Graph, s shapes.Shape) *Node {
					return Log(AddScalar(Iota(g, s, 1), 1)) // A = −(1 … N), the Mamba initialisation
				}).VariableWithShape("A_log", shapes.Make(dtypes.Float32, D, N)).ValueGraph(g)
				delta := Softplus(AddScalar(in[1], -4)) // mostly small steps, as after dt_proj's bias
				y, _ := bm.SelectiveScan(in[0], delta, Neg(Exp(aLog)), in[2], in[3], bm.ScanOptions{Chunk: cfg.ScanChunk, Backward: cfg.ScanBackward})
				return ReduceAllSum(Mul(y, in[4])), []*Node{in[0], in[1], in[2], in[3]}
			}})
	}
	if c := counts[bm.KindMoE]; c > 0 {
		pieces = append(pieces, block(fmt.Sprintf("MoE block E=%d %s", experts, cfg.Routing), c,
			func(ctx *context.Context, h *Node) *Node {
				out, _, _ := bm.MoE(ctx, cfg, experts, h, cfg.Routing)
				return out
			}))
		if cfg.Routing != bm.RoutingArgmax {
			pieces = append(pieces, block(fmt.Sprintf("  MoE block E=%d argmax (comparison)", experts), 0,
				func(ctx *context.Context, h *Node) *Node {
					out, _, _ := bm.MoE(ctx, cfg, experts, h, bm.RoutingArgmax)
					return out
				}))
		}
	}
	if c := counts[bm.KindMLP]; c > 0 || counts[bm.KindMoE] > 0 {
		name := "dense MLP block"
		if c == 0 {
			name = "  dense MLP block of one expert's size (comparison)"
		}
		pieces = append(pieces, block(name, c, func(ctx *context.Context, h *Node) *Node {
			return bm.MLP(ctx, cfg, h)
		}))
	}
	if c := counts[bm.KindAttention]; c > 0 {
		pieces = append(pieces, block("attention block", c, func(ctx *context.Context, h *Node) *Node {
			return bm.Attention(ctx, cfg, h)
		}))
	}
	pieces = append(pieces, piece{name: "embedding + final norm + head + loss", count: 1,
		inputs: []*tensors.Tensor{tokT},
		loss: func(ctx *context.Context, in []*Node) (*Node, []*Node) {
			return headLoss(ctx, cfg, in[0]), nil
		}})

	shape := fmt.Sprintf("batch %d x %d, d=%d %s", batch, seqLen, d, cfg.ComputeDType)
	var rows []Row
	for _, p := range pieces {
		for _, backward := range []bool{false, true} {
			pass := "fwd"
			if backward {
				pass = "fwd+bwd"
			}
			row := Row{Bench: "breakdown-" + pass, Variant: p.name, Shape: shape, Reps: reps, PeakBytes: -1}
			err := catch(func() error {
				ctx := context.New()
				ctx.SetParam("initializers_seed", int64(1))
				e, err := context.NewExec(backend, ctx, func(ctx *context.Context, in []*Node) []*Node {
					g := in[0].Graph()
					ctx.SetTraining(g, true)
					loss, wrt := p.loss(ctx.In("piece"), in)
					if !backward {
						return []*Node{loss}
					}
					return []*Node{withGradients(ctx, loss, wrt...)}
				})
				if err != nil {
					return err
				}
				args := make([]any, len(p.inputs))
				for i, t := range p.inputs {
					args[i] = t
				}
				row.CompileS, row.Ms, row.MinMs, err = timeExec(e, args, 2, reps)
				return err
			})
			if err != nil {
				row.Err = err.Error()
			} else {
				row.TokensPerS = float64(n) / (row.Ms / 1000)
				row.Extra = map[string]float64{"count": float64(p.count)}
				if backward {
					row.Extra["step_share_ms"] = float64(p.count) * row.Ms
				}
			}
			rows = append(rows, row)
			emit(&row)
		}
	}
	return rows
}

// headLoss is the start and end of the model without its blocks: the embedding lookup of
// tokens [B, T+1] (inputs = all but the last column), the final LayerNorm, the tied head and
// the masked cross-entropy against the shifted targets.
func headLoss(ctx *context.Context, cfg bm.Config, tokens *Node) *Node {
	g := tokens.Graph()
	T := tokens.Shape().Dim(1) - 1
	inputs := SliceAxis(tokens, 1, AxisRange(0, T))
	targets := SliceAxis(tokens, 1, AxisRange(1, T+1))
	emb := ctx.In("embedding").VariableWithShape("weight", shapes.Make(dtypes.Float32, cfg.Vocab, cfg.Dim)).ValueGraph(g)
	x := Gather(emb, InsertAxes(inputs, -1)) // [B, T, d]
	h := bm.LayerNorm(ctx.In("final_layernorm"), x, cfg.NormEps)
	dt := bm.ComputeDType(cfg)
	logits := DotGeneral(ConvertDType(h, dt), []int{-1}, nil, ConvertDType(emb, dt), []int{1}, nil)
	return bm.CrossEntropy(ConvertDType(logits, dtypes.Float32), targets, cfg.VocabReal)
}
