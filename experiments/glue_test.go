package experiments

import "testing"

// TestNoDecay checks the weight-decay exclusions the training drivers give the optimizer.
func TestNoDecay(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
	}{
		{"/decoder/layers/0/mixer/A_log", true},
		{"/decoder/layers/0/mixer/D", true},
		{"/decoder/layers/0/mixer/dt_proj_bias", true},
		{"/decoder/layers/0/mixer/conv1d_bias", true},
		{"/decoder/layers/1/mixer/router_bias", true},
		{"/decoder/layers/0/norm/weight", true},
		{"/decoder/final_layernorm/weight", true},
		{"/decoder/final_layernorm/bias", true},
		{"/decoder/layers/0/mixer/in_proj", false},
		{"/decoder/layers/1/mixer/fc1", false},
		{"/decoder/layers/1/mixer/router_weight", false},
		{"/embedding/word_embeddings/weight", false},
	} {
		if got := NoDecay(c.name); got != c.want {
			t.Errorf("NoDecay(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}
