package training

import (
	"slices"
	"strings"
	"testing"
)

// TestPlanSelection checks which runs the options select: all architectures by default, none
// with NoArchitectures, a subset of the ablation routings, and the errors for an empty plan
// and an unknown routing.
func TestPlanSelection(t *testing.T) {
	labels := func(o Options) ([]string, error) {
		plan, err := o.plan()
		var out []string
		for _, p := range plan {
			out = append(out, p.label)
		}
		return out, err
	}
	for _, tc := range []struct {
		name string
		o    Options
		want []string
	}{
		{"default", Options{Family: "tiny"}, []string{"tiny", "tiny-mamba", "tiny-transformer", "tiny-transformer-moe", "tiny-mamba-total"}},
		{"ablation", Options{Family: "tiny", Architectures: []string{"-mamba-total", ""}, Ablation: true},
			[]string{"tiny", "tiny sinkhorn-vanilla", "tiny argmax", "tiny switch", "tiny-mamba-total"}},
		{"ablation subset", Options{Family: "tiny", Architectures: NoArchitectures, Ablation: true, Routings: []string{"switch", "argmax"}},
			[]string{"tiny switch", "tiny argmax"}},
	} {
		got, err := labels(tc.o)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: runs %q, want %q", tc.name, got, tc.want)
		}
	}
	if _, err := labels(Options{Family: "tiny", Architectures: NoArchitectures}); err == nil || !strings.Contains(err.Error(), "no runs") {
		t.Errorf("no architectures and no ablation: error %v, want one about no runs", err)
	}
	if _, err := labels(Options{Family: "tiny", Ablation: true, Routings: []string{"top2"}}); err == nil || !strings.Contains(err.Error(), `"top2"`) {
		t.Errorf("unknown routing: error %v, want one naming it", err)
	}
}
