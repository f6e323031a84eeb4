package train

import (
	"fmt"
	"math"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// Scope of the optimizer's own variables (step counter and moments). Moments of the variable
// "/a/b/w" are "/train/adam_m/a/b/w" and "/train/adam_v/a/b/w".
const (
	OptimizerScope = "/train"
	StepName       = "step"
)

// Schedule is a linear warmup followed by a cosine decay of the learning rate.
//
// The update with index s (s = 0 for the first update) uses
//
//	lr(s) = Peak·(s+1)/Warmup                               for s < Warmup
//	lr(s) = Min + (Peak−Min)·(1 + cos(π·p))/2,  p = min(1, (s−Warmup)/max(1, Total−Warmup))
type Schedule struct {
	Peak, Min     float64
	Warmup, Total int
}

// At returns the learning rate of the update with index step (0-based), in float64.
func (s Schedule) At(step int) float64 {
	if step < s.Warmup {
		return s.Peak * float64(step+1) / float64(s.Warmup)
	}
	p := float64(step-s.Warmup) / float64(max(1, s.Total-s.Warmup))
	p = min(1, p)
	return s.Min + (s.Peak-s.Min)*0.5*(1+math.Cos(math.Pi*p))
}

// Graph returns the learning rate (float32 scalar) for the update with index step (an integer
// scalar node).
func (s Schedule) Graph(step *Node) *Node {
	g := step.Graph()
	f := ConvertDType(step, dtypes.Float32)
	warm := MulScalar(AddScalar(f, 1), s.Peak/float64(max(1, s.Warmup)))
	p := MinScalar(DivScalar(AddScalar(f, -float64(s.Warmup)), float64(max(1, s.Total-s.Warmup))), 1.0)
	cos := AddScalar(MulScalar(AddScalar(Cos(MulScalar(p, math.Pi)), 1), 0.5*(s.Peak-s.Min)), s.Min)
	return Where(LessThan(f, Scalar(g, dtypes.Float32, s.Warmup)), warm, cos)
}

// Validate checks the schedule's fields.
func (s Schedule) Validate() error {
	switch {
	case !(s.Peak > 0):
		return fmt.Errorf("learning-rate schedule: peak %g must be > 0", s.Peak)
	case s.Min < 0 || s.Min > s.Peak:
		return fmt.Errorf("learning-rate schedule: min %g must be in [0, peak=%g]", s.Min, s.Peak)
	case s.Warmup < 0:
		return fmt.Errorf("learning-rate schedule: warmup %d must be >= 0", s.Warmup)
	case s.Total < 1:
		return fmt.Errorf("learning-rate schedule: total steps %d must be >= 1", s.Total)
	}
	return nil
}

// AdamW is Adam with decoupled weight decay (Loshchilov & Hutter), global-norm gradient
// clipping and a warmup + cosine learning-rate schedule. Moments and the update arithmetic are
// float32 whatever the variables' dtype. For a trainable variable p with gradient g, at update
// t = step+1:
//
//	g ← g · min(1, ClipNorm/‖G‖)           ‖G‖ = global L2 norm over all gradients (if ClipNorm > 0)
//	m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
//	p ← p − lr·( m/(1−β1^t) / (sqrt(v/(1−β2^t)) + ε) + WeightDecay·p )
//
// where the WeightDecay term is dropped for variables selected by NoDecay.
type AdamW struct {
	Schedule     Schedule
	Beta1, Beta2 float64
	Eps          float64
	WeightDecay  float64
	// ClipNorm is the maximum global gradient norm; 0 disables clipping.
	ClipNorm float64
	// NoDecay selects the variables (by scope and name, as in "/decoder/layers/0/mixer/A_log")
	// that get no weight decay. Nil means DefaultNoDecay.
	NoDecay func(scopeAndName string) bool `json:"-"`
}

// DefaultAdamW returns the recipe used for the small reruns: peak lr, 1% warmup, cosine decay
// to lr/10 over steps, β = (0.9, 0.95), ε = 1e-8, weight decay 0.1, gradient clip 0.5.
func DefaultAdamW(lr float64, steps int) AdamW {
	return AdamW{
		Schedule:    Schedule{Peak: lr, Min: lr / 10, Warmup: max(1, steps/100), Total: steps},
		Beta1:       0.9,
		Beta2:       0.95,
		Eps:         1e-8,
		WeightDecay: 0.1,
		ClipNorm:    0.5,
	}
}

// Validate checks the optimizer's fields.
func (o AdamW) Validate() error {
	if err := o.Schedule.Validate(); err != nil {
		return err
	}
	switch {
	case o.Beta1 < 0 || o.Beta1 >= 1:
		return fmt.Errorf("adamw: beta1 %g must be in [0, 1)", o.Beta1)
	case o.Beta2 < 0 || o.Beta2 >= 1:
		return fmt.Errorf("adamw: beta2 %g must be in [0, 1)", o.Beta2)
	case !(o.Eps > 0):
		return fmt.Errorf("adamw: epsilon %g must be > 0", o.Eps)
	case o.WeightDecay < 0:
		return fmt.Errorf("adamw: weight decay %g must be >= 0", o.WeightDecay)
	case o.ClipNorm < 0:
		return fmt.Errorf("adamw: clip norm %g must be >= 0 (0 disables clipping)", o.ClipNorm)
	}
	return nil
}

// DefaultNoDecay excludes from weight decay the Mamba state parameters (A_log, D), every bias
// (a name "bias" or ending in "_bias") and every variable in a scope whose path contains
// "norm" (RMSNorm / LayerNorm weights). Embeddings and all matrices are decayed.
func DefaultNoDecay(scopeAndName string) bool {
	scope, name := context.SplitScope(scopeAndName)
	switch {
	case name == "A_log" || name == "D":
		return true
	case name == "bias" || strings.HasSuffix(name, "_bias"):
		return true
	case strings.Contains(strings.ToLower(scope), "norm"):
		return true
	}
	return false
}

// stepVariable returns the optimizer's step counter: the number of updates done, int64 scalar.
func stepVariable(ctx *context.Context) *context.Variable {
	return ctx.InAbsPath(OptimizerScope).Checked(false).
		VariableWithValue(StepName, int64(0)).SetTrainable(false)
}

// momentVariable returns the float32 moment named kind ("adam_m" or "adam_v") of v.
func momentVariable(ctx *context.Context, v *context.Variable, kind string) *context.Variable {
	scope := OptimizerScope + "/" + kind + v.Scope()
	if v.Scope() == context.RootScope {
		scope = OptimizerScope + "/" + kind
	}
	shape := shapes.Make(dtypes.Float32, v.Shape().Dimensions...)
	return ctx.InAbsPath(scope).Checked(false).WithInitializer(initializers.Zero).
		VariableWithShape(v.Name(), shape).SetTrainable(false)
}

// globalNorm returns the L2 norm (float32 scalar) of all gradients together.
func globalNorm(grads []*Node) *Node {
	var sum *Node
	for _, gr := range grads {
		s := ReduceAllSum(Square(ConvertDType(gr, dtypes.Float32)))
		if sum == nil {
			sum = s
		} else {
			sum = Add(sum, s)
		}
	}
	return Sqrt(sum)
}

// UpdateGraph builds one AdamW update of vars given their gradients grads (same order, any
// float dtype). It increments the step counter and returns the global gradient norm before
// clipping and the learning rate used, both float32 scalars.
func (o AdamW) UpdateGraph(ctx *context.Context, vars []*context.Variable, grads []*Node) (gradNorm, lr *Node) {
	if len(vars) != len(grads) || len(vars) == 0 {
		panic(fmt.Sprintf("adamw: %d variables and %d gradients", len(vars), len(grads)))
	}
	g := grads[0].Graph()
	noDecay := o.NoDecay
	if noDecay == nil {
		noDecay = DefaultNoDecay
	}
	stepVar := stepVariable(ctx)
	step := stepVar.ValueGraph(g)
	lr = o.Schedule.Graph(step)
	next := AddScalar(step, 1)
	stepVar.SetValueGraph(next)

	gradNorm = globalNorm(grads)
	scale := ScalarOne(g, dtypes.Float32)
	if o.ClipNorm > 0 {
		scale = MinScalar(Div(Scalar(g, dtypes.Float32, o.ClipNorm), MaxScalar(gradNorm, 1e-30)), 1.0)
	}
	t := ConvertDType(next, dtypes.Float32)
	corr1 := OneMinus(Pow(Scalar(g, dtypes.Float32, o.Beta1), t))
	corr2 := OneMinus(Pow(Scalar(g, dtypes.Float32, o.Beta2), t))

	for i, v := range vars {
		gr := Mul(ConvertDType(grads[i], dtypes.Float32), scale)
		mVar := momentVariable(ctx, v, "adam_m")
		vVar := momentVariable(ctx, v, "adam_v")
		m := Add(MulScalar(mVar.ValueGraph(g), o.Beta1), MulScalar(gr, 1-o.Beta1))
		s := Add(MulScalar(vVar.ValueGraph(g), o.Beta2), MulScalar(Square(gr), 1-o.Beta2))
		mVar.SetValueGraph(m)
		vVar.SetValueGraph(s)
		p := ConvertDType(v.ValueGraph(g), dtypes.Float32)
		u := Div(Div(m, corr1), AddScalar(Sqrt(Div(s, corr2)), o.Eps))
		if o.WeightDecay > 0 && !noDecay(v.ScopeAndName()) {
			u = Add(u, MulScalar(p, o.WeightDecay))
		}
		p = Sub(p, Mul(lr, u))
		v.SetValueGraph(ConvertDType(p, v.DType()))
	}
	return gradNorm, lr
}
