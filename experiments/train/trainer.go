package train

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
)

// LossFn builds the training objective. tokens is [B, T+1] int32: positions 0..T−1 are the
// inputs and 1..T the targets. loss is a float scalar. extra holds optional diagnostics:
// float or integer scalars (e.g. an auxiliary balancing loss, recorded as their mean) and
// rank-1 vectors whose names start with CountsPrefix (tokens per expert of one MoE layer,
// [E], summed between records and reduced to a coefficient of variation).
//
// The training graph marks itself with ctx.SetTraining(g, true) and evaluation graphs with
// false, so a model can switch its routing on ctx.IsTraining(g).
type LossFn func(ctx *context.Context, tokens *Node) (loss *Node, extra map[string]*Node)

// CountsPrefix marks an extra output as an MoE layer's tokens-per-expert counts, e.g.
// "counts/layer_3".
const CountsPrefix = "counts/"

// Batches is a deterministic, resumable source of token batches.
type Batches interface {
	// Next returns the next batch, flattened [B, T+1] row-major.
	Next() ([]int32, error)
	// State returns an opaque encoding of the position in the stream, such that Restore(State())
	// makes Next continue with the same batches.
	State() []byte
	// Restore returns to a position saved by State.
	Restore([]byte) error
}

// StepResult is what one training step returns to the host.
type StepResult struct {
	Loss     float64
	GradNorm float64 // global gradient norm before clipping
	LR       float64 // learning rate of this update
	Extras   map[string]float64
	Counts   map[string][]float64
}

// Trainer holds the compiled training step (forward, gradients and AdamW update in one graph)
// and the evaluation graph for one model (ctx + loss) and one batch shape.
type Trainer struct {
	backend backends.Backend
	ctx     *context.Context
	loss    LossFn
	cfg     Config

	trainExec, evalExec *context.Exec
	extraNames          []string      // sorted; the extras packed after loss, grad norm and lr
	extraSizes          []int         // each extra's values in the packed output (1, or E for counts)
	dp                  *dataParallel // nil on one device
	built               bool
	aliased             bool // the train step aliases its updated variables (Config.Alias)
}

// New returns a Trainer. Graphs are compiled on first use (Step, EvalLoss or Run).
func New(backend backends.Backend, ctx *context.Context, loss LossFn, cfg Config) (*Trainer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if backend == nil || ctx == nil || loss == nil {
		return nil, fmt.Errorf("train.New: backend, context and loss function are all required")
	}
	t := &Trainer{backend: backend, ctx: ctx, loss: loss, cfg: cfg}
	if cfg.Devices > 1 {
		var err error
		if t.dp, err = newDataParallel(backend, cfg.Devices); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Config returns the trainer's configuration with defaults filled in.
func (t *Trainer) Config() Config { return t.cfg }

// Context returns the model's context (model variables plus the optimizer's under
// OptimizerScope).
func (t *Trainer) Context() *context.Context { return t.ctx }

// catch runs fn and turns a panic (how GoMLX reports graph-building errors) into an error.
func catch(what string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = fmt.Errorf("%s: %w", what, e)
			} else {
				err = fmt.Errorf("%s: %v", what, r)
			}
		}
	}()
	return fn()
}

func (t *Trainer) tokensShape() shapes.Shape {
	return shapes.Make(dtypes.Int32, t.cfg.Batch, t.cfg.SeqLen+1)
}

// trainGraph is the body of the compiled train step: tokens [B, T+1] → one float32 vector that
// packs the loss, the grad norm, the lr and the extras in sorted name order (each scalar one
// value, each counts vector its E values); model and optimizer variables updated. One output
// means one device-to-host copy per step. Read one by one, the 33 outputs of the 1.5b step (its
// 15 MoE layers' counts and Sinkhorn rounds) coincided with 8–11 ms between its last kernel and
// the step's return on an H200, and the 19 of the small step with 4.5–5.1 ms.
func (t *Trainer) trainGraph(ctx *context.Context, tokens *Node) []*Node {
	g := tokens.Graph()
	ctx.SetTraining(g, true)
	loss, extra := t.loss(ctx, tokens)
	if loss == nil || !loss.Shape().IsScalar() || !loss.DType().IsFloat() {
		panic(fmt.Sprintf("loss function returned %v: want a float scalar", loss))
	}
	var vars []*context.Variable
	var values []*Node
	for v := range ctx.IterVariables() {
		if v.Trainable && v.InUseByGraph(g) {
			vars = append(vars, v)
			values = append(values, v.ValueGraph(g))
		}
	}
	if len(vars) == 0 {
		panic("loss function uses no trainable variable")
	}
	grads := Gradient(loss, values...)
	gradNorm, lr := t.cfg.Optimizer.UpdateGraph(ctx, vars, grads)

	names := make([]string, 0, len(extra))
	for n, x := range extra {
		switch {
		case x == nil:
			panic(fmt.Sprintf("extra output %q is nil", n))
		case strings.HasPrefix(n, CountsPrefix) && x.Rank() == 1:
		case strings.HasPrefix(n, CountsPrefix):
			panic(fmt.Sprintf("extra output %q has shape %s: counts must be rank 1 [E]", n, x.Shape()))
		case !x.Shape().IsScalar():
			panic(fmt.Sprintf("extra output %q has shape %s: want a scalar, or a rank-1 vector named %s…",
				n, x.Shape(), CountsPrefix))
		}
		names = append(names, n)
	}
	sort.Strings(names)
	t.extraNames = names
	t.extraSizes = make([]int, len(names))
	parts := []*Node{Reshape(ConvertDType(loss, dtypes.Float32), 1), Reshape(gradNorm, 1), Reshape(lr, 1)}
	for i, n := range names {
		x := Reshape(ConvertDType(StopGradient(extra[n]), dtypes.Float32), -1)
		t.extraSizes[i] = x.Shape().Dim(0)
		parts = append(parts, x)
	}
	outs := []*Node{Concatenate(parts, 0)}
	if t.dp != nil && t.dp.sharded > 0 {
		t.dp.setOutputSpecs(t.trainExec, ctx, g)
	}
	if t.aliasWanted() {
		ok, err := bm.AliasUpdatedVariables(ctx, g)
		if err != nil {
			panic(err)
		}
		t.aliased = ok
	}
	return outs
}

// aliasWanted reports whether the train step should alias its updated variables (Config.Alias).
func (t *Trainer) aliasWanted() bool {
	switch t.cfg.Alias {
	case "on":
		return true
	case "off":
		return false
	}
	return t.dp == nil
}

// Aliased reports whether the compiled training step writes the variables it updates into their
// own buffers (Config.Alias; false before the first step and off the XLA backend).
func (t *Trainer) Aliased() bool { return t.aliased }

// build creates the model and optimizer variables (without values) and the executors. On one
// device the model variables are created by building the evaluation graph without compiling it;
// on a mesh they are initialized on one device and the evaluation graph compiled (it changes no
// variable). Every graph compiles when first run otherwise. (Compiling a graph that updates
// variables ahead of its first run would give away the variables' buffers.)
func (t *Trainer) build() error {
	if t.built {
		return nil
	}
	return catch("building the model graphs", func() error {
		ctx := t.ctx
		if ctx.NumVariables() > 0 {
			// Variables given beforehand (e.g. imported weights): let the model reuse them.
			ctx = ctx.Checked(false)
		}
		if t.dp != nil {
			// On a mesh, the variables are created and initialized on one device first, as on a
			// single device (same values for the same seed), and replicated from there.
			if err := t.createVariables(ctx); err != nil {
				return err
			}
			ctx = t.ctx.Reuse()
			if t.cfg.Sharded != nil {
				for v := range t.ctx.IterVariables() {
					if v.Trainable && t.cfg.Sharded(v) {
						if err := t.dp.shardVariable(v); err != nil {
							return err
						}
					}
				}
				if t.dp.sharded == 0 {
					return fmt.Errorf("train config: Sharded selects none of the model's %d variables", t.ctx.NumVariables())
				}
			}
		} else {
			// On one device the variables are only created here, without values and without
			// compiling anything: a fresh run initializes them (initialize), a resumed one reads
			// them from its checkpoint, and the graphs compile when first run. (A run resumed
			// from its final checkpoint compiles nothing of the trainer's.)
			if err := t.defineVariables(ctx); err != nil {
				return err
			}
			// The context's random-number state, which the initializers draw from, is a
			// variable too (saved in checkpoints): given its seeded value now, where the
			// initialization would have created it, unless it has one.
			if v := t.ctx.GetVariableByScopeAndName(context.RootScope, context.RNGStateVariableName); v == nil || !v.HasValue() {
				if err := t.ctx.ResetRNGState(); err != nil {
					return err
				}
			}
			ctx = t.ctx.Reuse()
		}
		var err error
		t.evalExec, err = context.NewExec(t.backend, ctx, func(ctx *context.Context, tokens *Node) *Node {
			ctx.SetTraining(tokens.Graph(), false)
			loss, _ := t.loss(ctx, tokens)
			if loss == nil || !loss.Shape().IsScalar() || !loss.DType().IsFloat() {
				panic(fmt.Sprintf("loss function returned %v: want a float scalar", loss))
			}
			return ConvertDType(loss, dtypes.Float32)
		})
		if err != nil {
			return err
		}
		t.evalExec.SetMaxCache(2) // full batches, and the short last batch of a held-out split
		if t.dp != nil {
			t.dp.configure(t.evalExec)
			if err := t.dp.preCompile(t.evalExec, tensors.FromShape(t.tokensShape())); err != nil {
				return err
			}
		}
		var trainable []*context.Variable
		for v := range t.ctx.IterVariables() {
			if v.Trainable {
				trainable = append(trainable, v)
			}
		}
		if len(trainable) == 0 {
			return fmt.Errorf("the loss function creates no trainable variable")
		}
		stepVariable(t.ctx)
		for _, v := range trainable {
			for _, kind := range []string{"adam_m", "adam_v"} {
				m := momentVariable(t.ctx, v, kind)
				if t.dp != nil && t.cfg.Sharded != nil && t.cfg.Sharded(v) {
					if err := t.dp.shardVariable(m); err != nil {
						return err
					}
				}
			}
		}
		t.trainExec, err = context.NewExec(t.backend, t.ctx.Reuse(), t.trainGraph)
		if err != nil {
			return err
		}
		t.trainExec.SetMaxCache(1)
		if t.dp != nil {
			t.dp.configure(t.trainExec)
		}
		t.built = true
		return nil
	})
}

// defineVariables builds the evaluation graph once without compiling it, which creates the
// model's variables in ctx (without values).
func (t *Trainer) defineVariables(ctx *context.Context) error {
	g := NewGraph(t.backend, "create_variables")
	defer g.Finalize()
	tokens := Parameter(g, "tokens", t.tokensShape())
	ctx.SetTraining(g, false)
	if loss, _ := t.loss(ctx, tokens); loss == nil {
		return fmt.Errorf("loss function returned no loss")
	}
	return nil
}

// createVariables creates the model's variables in ctx (defineVariables) and initializes them on
// the default device.
func (t *Trainer) createVariables(ctx *context.Context) error {
	if err := t.defineVariables(ctx); err != nil {
		return err
	}
	if err := t.ctx.InitializeVariables(t.backend, nil); err != nil {
		return fmt.Errorf("initializing variables: %w", err)
	}
	return nil
}

// run executes e on one [B, T+1] batch: directly on one device, split over the mesh otherwise.
func (t *Trainer) run(e *context.Exec, in *tensors.Tensor) ([]*tensors.Tensor, error) {
	if t.dp != nil {
		return t.dp.exec(e, in)
	}
	return e.Exec(in)
}

// initialize builds the trainer (build) and gives every variable without a value its initial
// value.
func (t *Trainer) initialize() error {
	if err := t.build(); err != nil {
		return err
	}
	if err := t.ctx.InitializeVariables(t.backend, nil); err != nil {
		return fmt.Errorf("initializing variables: %w", err)
	}
	return nil
}

// batchTensor checks a flattened batch and shapes it [B, T+1].
func (t *Trainer) batchTensor(tokens []int32) (*tensors.Tensor, error) {
	want := t.cfg.Batch * (t.cfg.SeqLen + 1)
	if len(tokens) != want {
		return nil, fmt.Errorf("batch has %d tokens, want batch %d × (seq_len %d + 1) = %d",
			len(tokens), t.cfg.Batch, t.cfg.SeqLen, want)
	}
	return tensors.FromFlatDataAndDimensions(tokens, t.cfg.Batch, t.cfg.SeqLen+1), nil
}

// Step runs one training step on a flattened [B, T+1] batch, updating the variables.
func (t *Trainer) Step(tokens []int32) (StepResult, error) {
	if err := t.initialize(); err != nil {
		return StepResult{}, err
	}
	in, err := t.batchTensor(tokens)
	if err != nil {
		return StepResult{}, err
	}
	var outs []*tensors.Tensor
	err = catch("training step", func() error {
		var err error
		outs, err = t.run(t.trainExec, in)
		return err
	})
	if err != nil {
		return StepResult{}, err
	}
	defer func() {
		for _, x := range outs {
			x.FinalizeAll()
		}
	}()
	return t.unpack(outs)
}

// unpack reads the train step's packed output (see trainGraph) into a StepResult.
func (t *Trainer) unpack(outs []*tensors.Tensor) (StepResult, error) {
	want := 3
	for _, n := range t.extraSizes {
		want += n
	}
	if len(outs) != 1 {
		return StepResult{}, fmt.Errorf("training step: %d outputs, want 1 packed vector", len(outs))
	}
	flat, err := tensors.CopyFlatData[float32](outs[0])
	if err != nil {
		return StepResult{}, fmt.Errorf("training step: reading its outputs: %w", err)
	}
	if len(flat) != want {
		return StepResult{}, fmt.Errorf("training step: %d packed values, want %d", len(flat), want)
	}
	r := StepResult{Loss: float64(flat[0]), GradNorm: float64(flat[1]), LR: float64(flat[2])}
	at := 3
	for i, n := range t.extraNames {
		vals := flat[at : at+t.extraSizes[i]]
		at += t.extraSizes[i]
		if strings.HasPrefix(n, CountsPrefix) {
			if r.Counts == nil {
				r.Counts = map[string][]float64{}
			}
			c := make([]float64, len(vals))
			for j, v := range vals {
				c[j] = float64(v)
			}
			r.Counts[strings.TrimPrefix(n, CountsPrefix)] = c
		} else {
			if r.Extras == nil {
				r.Extras = map[string]float64{}
			}
			r.Extras[n] = float64(vals[0])
		}
	}
	return r, nil
}

// EvalLoss returns the mean loss over the next n batches of b, computed without updating any
// variable (an evaluation graph: ctx.IsTraining(g) is false). A source that ends early (io.EOF)
// or whose last batch is short (a held-out split that is not a whole number of batches) is
// evaluated on what it has: a short batch runs as its own, smaller shape, and batch means are
// weighted by their rows, so the result is the mean over every window read. Data-parallel
// trainers skip a short batch whose rows do not divide over the devices. It is an error if not
// even one window can be evaluated.
func (t *Trainer) EvalLoss(b Batches, n int) (float64, error) {
	if err := t.initialize(); err != nil {
		return 0, err
	}
	if n < 1 {
		return 0, fmt.Errorf("EvalLoss: %d batches, want >= 1", n)
	}
	T1 := t.cfg.SeqLen + 1
	var sum float64
	var rows int
	for i := 0; i < n; i++ {
		tokens, err := b.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("evaluation batch %d: %w", i, err)
		}
		r := len(tokens) / T1
		if len(tokens) == 0 || r*T1 != len(tokens) || r > t.cfg.Batch {
			return 0, fmt.Errorf("evaluation batch %d has %d tokens, want up to batch %d rows of seq_len %d + 1 = %d tokens",
				i, len(tokens), t.cfg.Batch, t.cfg.SeqLen, T1)
		}
		if r < t.cfg.Batch && t.cfg.Devices > 1 && r%t.cfg.Devices != 0 {
			break
		}
		in := tensors.FromFlatDataAndDimensions(tokens, r, T1)
		var out *tensors.Tensor
		err = catch("evaluation step", func() error {
			outs, err := t.run(t.evalExec, in)
			if err == nil {
				out = outs[0]
			}
			return err
		})
		if err != nil {
			return 0, err
		}
		sum += float64(r) * float64(tensors.ToScalar[float32](out))
		rows += r
		out.FinalizeAll()
		if r < t.cfg.Batch {
			break
		}
	}
	if rows == 0 {
		return 0, fmt.Errorf("evaluation: the source has no window of seq_len %d + 1 tokens to evaluate", t.cfg.SeqLen)
	}
	mean := sum / float64(rows)
	if math.IsNaN(mean) || math.IsInf(mean, 0) {
		return mean, fmt.Errorf("evaluation loss is %v", mean)
	}
	return mean, nil
}
