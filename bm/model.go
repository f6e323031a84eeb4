package bm

import (
	"fmt"
	"strconv"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/train"
)

// The stack (SPEC.md §1): x₀ = Embedding(tokens); xᵢ = xᵢ₋₁ + Fᵢ(RMSNormᵢ(xᵢ₋₁));
// logits = LayerNorm_f(x_L)·W_embᵀ. The residual stream is float32.

// Model is a BlackMamba-family network described by its Config. It holds no variables: they
// live in the context passed to Forward, under the scopes listed in the package documentation.
type Model struct {
	Cfg Config
}

// New validates cfg and returns its model.
func New(cfg Config) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Model{Cfg: cfg}, nil
}

// ForwardOptions adjust a forward pass.
type ForwardOptions struct {
	// Routing forces the expert choice of the MoE blocks: one of the Routing* constants. Empty
	// means cfg.Routing in training graphs (ctx.IsTraining) and RoutingArgmax otherwise.
	Routing string
	// AfterBlock, if not nil, is called with each block's index once the block is built (its
	// norm's and mixer's variables created).
	AfterBlock func(block int)
}

// Output is the result of Model.Forward.
type Output struct {
	Logits       *Node   // [B, T, V] float32 (padding rows included; Loss masks them)
	Hidden       *Node   // [B, T, d] float32: the output of the final LayerNorm
	ExpertCounts []*Node // per MoE block in order: [E] int32, tokens routed to each expert
	Choices      []*Node // per MoE block in order: [B·T] int32, the expert of each token
	AuxLoss      *Node   // scalar float32: sum of the blocks' auxiliary losses; nil if none
	// SinkhornIters has one entry per MoE block in order: the scalar int32 number of Sinkhorn
	// rounds the block ran, or nil when its route is not a Sinkhorn route.
	SinkhornIters []*Node
}

// embeddingTable returns the embedding (and tied head) [V, d] float32.
func embeddingTable(ctx *context.Context, cfg Config, g *Graph) *Node {
	return ctx.In("embedding").In("word_embeddings").WithInitializer(embeddingInit(ctx, cfg)).
		VariableWithShape("weight", shapes.Make(dtypes.Float32, cfg.Vocab, cfg.Dim)).ValueGraph(g)
}

// layerScope returns the context of block i: /decoder/layers/{i}.
func layerScope(ctx *context.Context, i int) *context.Context {
	return ctx.In("decoder").In("layers").In(strconv.Itoa(i))
}

// routing resolves the expert-choice algorithm of a graph.
func (m *Model) routing(ctx *context.Context, g *Graph, opts ForwardOptions) string {
	if opts.Routing != "" {
		return opts.Routing
	}
	if ctx.IsTraining(g) {
		return m.Cfg.Routing
	}
	return RoutingArgmax
}

// Forward runs the network on tokens [B, T] (int32 ids < Vocab) and returns the logits and the
// routing statistics. Variables are created in ctx on first use.
func (m *Model) Forward(ctx *context.Context, tokens *Node, opts ForwardOptions) Output {
	cfg := m.Cfg
	g := tokens.Graph()
	if tokens.Rank() != 2 {
		panic(fmt.Sprintf("bm: Model.Forward: tokens must be [B, T], got %s", tokens.Shape()))
	}
	route := m.routing(ctx, g, opts)
	emb := embeddingTable(ctx, cfg, g)
	x := embed(emb, ConvertDType(tokens, dtypes.Int32)) // [B, T, d]
	var out Output
	mixer := func(b Block, mctx *context.Context, h *Node) *Node {
		switch b.Kind {
		case KindMamba:
			return Mamba(mctx, cfg, h)
		case KindAttention:
			return Attention(mctx, cfg, h)
		case KindMLP:
			return MLP(mctx, cfg, h)
		}
		r := MoEWithStats(mctx, cfg, b.Experts, h, route)
		out.ExpertCounts = append(out.ExpertCounts, r.Counts)
		out.Choices = append(out.Choices, r.Choice)
		out.SinkhornIters = append(out.SinkhornIters, r.SinkhornIters)
		if r.Aux != nil {
			if out.AuxLoss == nil {
				out.AuxLoss = r.Aux
			} else {
				out.AuxLoss = Add(out.AuxLoss, r.Aux)
			}
		}
		return r.Out
	}
	x = Residual(ctx, cfg, x, func(i int, b Block, mctx *context.Context, h *Node) *Node {
		y := mixer(b, mctx, h)
		if opts.AfterBlock != nil {
			opts.AfterBlock(i)
		}
		return y
	})
	out.Hidden, out.Logits = headLogits(ctx, cfg, x, emb)
	return out
}

// Residual runs the pre-norm residual blocks of cfg on the residual stream x [..., d] float32:
// for block i, x ← x + mixer(i, block, ctx /decoder/layers/{i}/mixer, RMSNorm_i(x)), the
// mixer's output converted to float32. The parallel forward, the prefill and the decoding step
// differ only in the mixer they pass.
func Residual(ctx *context.Context, cfg Config, x *Node, mixer func(i int, b Block, mctx *context.Context, h *Node) *Node) *Node {
	for i, b := range cfg.Blocks() {
		lctx := layerScope(ctx, i)
		h := RMSNorm(lctx.In("norm"), x, cfg.NormEps)
		x = Add(x, ConvertDType(mixer(i, b, lctx.In("mixer"), h), dtypes.Float32))
	}
	return x
}

// headLogits applies the final LayerNorm to the residual stream x [..., d] and the tied head:
// logits = LayerNorm_f(x)·W_embᵀ [..., V] float32.
func headLogits(ctx *context.Context, cfg Config, x, emb *Node) (hidden, logits *Node) {
	return headLogitsOf(ctx, cfg, LayerNorm(ctx.In("decoder").In("final_layernorm"), x, cfg.NormEps), emb)
}

// headLogitsOf is headLogits of the normed hidden state [..., d]: it returns hidden and the
// logits.
func headLogitsOf(ctx *context.Context, cfg Config, hidden, emb *Node) (_, logits *Node) {
	dt := ComputeDType(cfg)
	if v := castVariable(ctx.In("embedding").In("word_embeddings"), headCopyName, cfg.Vocab, cfg.Dim); v != nil {
		emb = v.ValueGraph(hidden.Graph()) // the head's copy in the compute dtype (CastWeights)
	}
	logits = DotGeneral(ConvertDType(hidden, dt), []int{-1}, nil, ConvertDType(emb, dt), []int{1}, nil)
	return hidden, ConvertDType(logits, dtypes.Float32)
}

// Loss returns the mean next-token cross-entropy of tokens [B, T+1] (inputs tokens[:, :T],
// targets tokens[:, 1:]) plus the blocks' auxiliary loss when there is one, and the forward
// output on the inputs. Logits of padding ids (>= VocabReal) are masked to −∞ before the
// softmax; the cross-entropy is log-sum-exp minus the target's logit (no dense one-hot).
func (m *Model) Loss(ctx *context.Context, tokens *Node, opts ForwardOptions) (loss *Node, out Output) {
	if tokens.Rank() != 2 || tokens.Shape().Dim(1) < 2 {
		panic(fmt.Sprintf("bm: Model.Loss: tokens must be [B, T+1] with T >= 1, got %s", tokens.Shape()))
	}
	tokens = ConvertDType(tokens, dtypes.Int32)
	T := tokens.Shape().Dim(1) - 1
	inputs := SliceAxis(tokens, 1, AxisRange(0, T))
	targets := SliceAxis(tokens, 1, AxisRange(1, T+1))
	out = m.Forward(ctx, inputs, opts)
	loss = CrossEntropy(out.Logits, targets, m.Cfg.VocabReal)
	if out.AuxLoss != nil {
		loss = Add(loss, out.AuxLoss)
	}
	return loss, out
}

// CrossEntropy returns the mean over all positions of −log softmax(logits)[target], with the
// logits of ids >= vocabReal masked to −∞. logits: [..., V] float32; targets: [...] int32
// (< vocabReal). Computed as logsumexp(logits) − logits[target]: the target logit is gathered,
// no one-hot of the vocabulary is built.
func CrossEntropy(logits, targets *Node, vocabReal int) *Node {
	g := logits.Graph()
	V := logits.Shape().Dim(-1)
	flat := Reshape(logits, -1, V) // [M, V]
	M := flat.Shape().Dim(0)
	if vocabReal < V {
		real := LessThan(Iota(g, shapes.Make(dtypes.Int32, 1, V), 1), Const(g, int32(vocabReal)))
		flat = Where(BroadcastToShape(real, flat.Shape()), flat, Infinity(g, dtypes.Float32, -1))
	}
	mx := StopGradient(ReduceAndKeep(flat, ReduceMax, -1))                                   // [M, 1]
	lse := Add(Log(ReduceSum(Exp(Sub(flat, mx)), -1)), Reshape(mx, M))                       // [M]
	rows := Iota(g, shapes.Make(dtypes.Int32, M, 1), 0)                                      // [M, 1]
	idx := Concatenate([]*Node{rows, Reshape(ConvertDType(targets, dtypes.Int32), M, 1)}, 1) // [M, 2]
	target := Gather(flat, idx)                                                              // [M]
	return ReduceAllMean(Sub(lse, target))
}

// ModelFn adapts the model to train.Trainer: inputs[0] is a batch of token windows [B, T+1]
// int32, and the single prediction is the scalar training loss (cross-entropy plus auxiliary
// loss). Pair it with PredictionIsLoss as the trainer's loss function.
func (m *Model) ModelFn(opts ForwardOptions) train.ModelFn {
	return func(ctx *context.Context, _ any, inputs []*Node) []*Node {
		loss, _ := m.Loss(ctx, inputs[0], opts)
		return []*Node{loss}
	}
}

// PredictionIsLoss is the train.LossFn that goes with Model.ModelFn: the prediction already is
// the loss, the labels are ignored.
func PredictionIsLoss(_, predictions []*Node) *Node { return predictions[0] }
