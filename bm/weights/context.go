package weights

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// MetaNonTrainable is the checkpoint metadata key listing, as a JSON array, the variables that
// are not trainable (optimizer state, step counters), so that LoadContext restores them as such.
const MetaNonTrainable = "non_trainable"

// FromContext returns the value of every variable of ctx that has one, keyed by its scope and
// name joined by "/" (Variable.ScopeAndName, e.g. "/decoder/layers/0/mixer/in_proj"). The tensors
// are the variables' own values, not copies.
func FromContext(ctx *context.Context) map[string]*tensors.Tensor {
	ts := map[string]*tensors.Tensor{}
	for v := range ctx.IterVariables() {
		if !v.HasValue() {
			continue
		}
		t, err := v.Value()
		if err != nil {
			continue
		}
		ts[v.ScopeAndName()] = t
	}
	return ts
}

// NonTrainable returns the sorted names of ctx's variables that are not trainable.
func NonTrainable(ctx *context.Context) []string {
	var names []string
	for v := range ctx.IterVariables() {
		if !v.Trainable {
			names = append(names, v.ScopeAndName())
		}
	}
	sort.Strings(names)
	return names
}

// IntoOptions relaxes IntoContext.
type IntoOptions struct {
	// AllowMissing leaves variables of the context that have no tensor as they are.
	AllowMissing bool
	// AllowExtra creates variables for tensors that match no variable of the context.
	AllowExtra bool
	// DType, when set, is the dtype of float variables that IntoContext creates (floats are
	// converted). Tensors set into existing float variables always take the variable's dtype.
	DType dtypes.DType
	// NonTrainable names variables to create as not trainable.
	NonTrainable []string
}

// splitName splits "/scope/sub/name" into the scope "/scope/sub" and the name "name".
func splitName(full string) (scope, name string, err error) {
	i := strings.LastIndex(full, context.ScopeSeparator)
	if !strings.HasPrefix(full, context.ScopeSeparator) || i == len(full)-1 {
		return "", "", fmt.Errorf("tensor name %q is not a variable path like \"/scope/name\"", full)
	}
	scope, name = full[:i], full[i+1:]
	if scope == "" {
		scope = context.RootScope
	}
	return scope, name, nil
}

// IntoContext puts the tensors ts, keyed as FromContext returns them, into ctx's variables.
//
// When ctx has no variables yet, one is created per tensor (trainable unless named in
// NonTrainable); build the model afterwards with ctx.Reuse() so that it uses them and fails on a
// variable it lacks. When ctx already has variables (a model built once), each tensor must match
// a variable's dimensions, and every variable must get a tensor: a missing or extra name or a shape
// mismatch is an error naming it, unless allowed by opts. Nothing is changed when an error is
// returned. The context takes ownership of the tensors.
func IntoContext(ctx *context.Context, ts map[string]*tensors.Tensor, opts ...IntoOptions) error {
	var o IntoOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	existing := map[string]*context.Variable{}
	for v := range ctx.IterVariables() {
		existing[v.ScopeAndName()] = v
	}
	fresh := len(existing) == 0
	nonTrainable := map[string]bool{}
	for _, n := range o.NonTrainable {
		nonTrainable[n] = true
	}

	names := make([]string, 0, len(ts))
	for n := range ts {
		names = append(names, n)
	}
	sort.Strings(names)

	type action struct {
		name        string
		scope, base string
		v           *context.Variable // nil: create
		t           *tensors.Tensor
	}
	var acts []action
	var errs []error
	for _, full := range names {
		t := ts[full]
		if t == nil {
			errs = append(errs, fmt.Errorf("tensor %q is nil", full))
			continue
		}
		scope, base, err := splitName(full)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v := existing[full]
		if v == nil {
			if !fresh && !o.AllowExtra {
				errs = append(errs, fmt.Errorf("tensor %q %s has no variable in the context", full, t.Shape()))
				continue
			}
			want := t.DType()
			if o.DType != dtypes.InvalidDType && want.IsFloat() && o.DType.IsFloat() {
				want = o.DType
			}
			ct, err := convertTensor(t, want)
			if err != nil {
				errs = append(errs, fmt.Errorf("tensor %q: %w", full, err))
				continue
			}
			acts = append(acts, action{full, scope, base, nil, ct})
			continue
		}
		vs := v.Shape()
		if !t.Shape().EqualDimensions(vs) {
			errs = append(errs, fmt.Errorf("tensor %q has shape %v, its variable has %v", full, t.Shape().Dimensions, vs.Dimensions))
			continue
		}
		ct, err := convertTensor(t, vs.DType)
		if err != nil {
			errs = append(errs, fmt.Errorf("tensor %q (%s) into variable of dtype %s: %w", full, t.DType(), vs.DType, err))
			continue
		}
		acts = append(acts, action{full, scope, base, v, ct})
	}
	if !o.AllowMissing && !fresh {
		var missing []string
		for n := range existing {
			if _, ok := ts[n]; !ok {
				missing = append(missing, n)
			}
		}
		sort.Strings(missing)
		for _, n := range missing {
			errs = append(errs, fmt.Errorf("variable %q %s has no tensor", n, existing[n].Shape()))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("weights: loading into context: %w", errors.Join(limitErrors(errs)...))
	}
	for _, a := range acts {
		if a.v == nil {
			v := ctx.InAbsPath(a.scope).Checked(false).VariableWithValue(a.base, a.t)
			if nonTrainable[a.name] {
				v.SetTrainable(false)
			}
			continue
		}
		if err := a.v.SetValue(a.t); err != nil {
			return fmt.Errorf("weights: setting variable %q: %w", a.name, err)
		}
	}
	return nil
}

// limitErrors keeps the first few errors and counts the rest.
func limitErrors(errs []error) []error {
	const keep = 12
	if len(errs) <= keep {
		return errs
	}
	out := append([]error(nil), errs[:keep]...)
	return append(out, fmt.Errorf("... and %d more", len(errs)-keep))
}

// convertTensor returns t converted to dtype dt (t itself if it already has it).
func convertTensor(t *tensors.Tensor, dt dtypes.DType) (*tensors.Tensor, error) {
	if t.DType() == dt {
		return t, nil
	}
	var out *tensors.Tensor
	var cerr error
	err := tensorBytes(t, func(b []byte) {
		var raw []byte
		raw, cerr = convertRaw(b, t.DType(), dt)
		if cerr == nil {
			out, cerr = fromBytes(shapes.Make(dt, t.Shape().Dimensions...), raw)
		}
	})
	if err == nil {
		err = cerr
	}
	return out, err
}

// SaveContext writes every variable of ctx to a checkpoint at path (see Save), with meta plus the
// list of non-trainable variables under MetaNonTrainable.
func SaveContext(path string, ctx *context.Context, meta map[string]string) error {
	m := map[string]string{}
	for k, v := range meta {
		m[k] = v
	}
	if nt := NonTrainable(ctx); len(nt) > 0 {
		b, err := json.Marshal(nt)
		if err != nil {
			return err
		}
		m[MetaNonTrainable] = string(b)
	}
	return Save(path, FromContext(ctx), m)
}

// LoadContext reads the checkpoint at path into ctx with IntoContext (non-trainable variables are
// recreated as such) and returns its metadata.
func LoadContext(path string, ctx *context.Context, opts IntoOptions) (map[string]string, error) {
	ts, meta, err := Load(path)
	if err != nil {
		return nil, err
	}
	if s, ok := meta[MetaNonTrainable]; ok {
		var nt []string
		if err := json.Unmarshal([]byte(s), &nt); err != nil {
			return nil, fmt.Errorf("weights: checkpoint %s: metadata %q: %w", path, MetaNonTrainable, err)
		}
		opts.NonTrainable = append(opts.NonTrainable, nt...)
	}
	if err := IntoContext(ctx, ts, opts); err != nil {
		return nil, fmt.Errorf("%w (checkpoint %s)", err, path)
	}
	return meta, nil
}
