package eval

import "testing"

func TestMetricsPerKind(t *testing.T) {
	for _, c := range []struct {
		r    Result
		want string
	}{
		{Result{Task: "piqa", Acc: 0.5, AccErr: 0.01, AccNorm: 0.6, NormErr: 0.02}, "acc 0.5000 ± 0.0100  acc_norm 0.6000 ± 0.0200"},
		{Result{Task: "winogrande", Acc: 0.5, AccErr: 0.01}, "acc 0.5000 ± 0.0100"},
		{Result{Task: "lambada", Acc: 0.25, AccErr: 0.01, PPL: 12.5}, "acc 0.2500 ± 0.0100  perplexity 12.5"},
	} {
		if got := c.r.Metrics(); got != c.want {
			t.Errorf("%s: Metrics() = %q, want %q", c.r.Task, got, c.want)
		}
	}
	if v := (Result{Acc: 0.3, AccNorm: 0.4, Headline: "acc_norm"}).HeadlineValue(); v != 0.4 {
		t.Errorf("HeadlineValue = %v, want the acc_norm 0.4", v)
	}
}
