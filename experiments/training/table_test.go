package training

import (
	"strings"
	"testing"

	"blackmamba/experiments/eval"
)

func TestWriteTables(t *testing.T) {
	r := &Result{Family: "tiny", SeqLen: 32, Batch: 2, Steps: 10, Seed: 1, Threshold: 5.5, Runs: []RunResult{
		{Label: "tiny", Pattern: "r8r8r8r8", Routing: "sinkhorn", ParamsTotal: 2_000_000, ParamsActive: 1_000_000,
			TrainFLOPsPerToken: 6e6, TokensPerSec: 1234.4, WallSeconds: 12.3, FinalHeldOutMean: 5.25, Reached: true,
			FLOPsToThreshold: 4.5e12, ZeroShot: []eval.Result{
				{Task: "piqa", Examples: 20, Acc: 0.55, AccNorm: 0.6, Headline: "acc", Chance: 0.5},
				{Task: "lambada", Examples: 20, Acc: 0.05, PPL: 1234, Headline: "acc"},
			}},
		{Label: "tiny-mamba", Pattern: "r1r1r1r1", Routing: "sinkhorn", ParamsTotal: 1_000_000, ParamsActive: 1_000_000,
			FinalHeldOutMean: 5.75, ZeroShotError: "boom"},
	}}
	var b strings.Builder
	if err := r.WriteTables(&b); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	for _, want := range []string{
		"tiny family, 2 x 32 tokens per step, 10 steps (640 tokens per run), float32, seed 1; threshold 5.5000",
		"| tiny | r8×4 | sinkhorn | 2.0M | 1.0M | 0.006 | 1234 | 12 | 5.2500 | 4.5e+12 |",
		"| tiny-mamba | r1×4 | sinkhorn | 1.0M | 1.0M | 0.000 | 0 | 0 | 5.7500 | not reached |",
		"| run | lambada (0.00) | piqa (0.50) |",
		"| tiny | 0.050 / 1.23e+03 (n=20) | 0.550 acc (n=20) |",
		"| tiny-mamba | – | – |",
		"tiny-mamba: zero-shot evaluation failed: boom",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("tables lack %q:\n%s", want, got)
		}
	}
}

func TestShortPattern(t *testing.T) {
	for in, want := range map[string]string{"r8r8r8": "r8×3", "a1": "a1", "r8a1r8": "r8a1r8", "rrr": "r×3"} {
		if got := shortPattern(in); got != want {
			t.Errorf("shortPattern(%q) = %q, want %q", in, got, want)
		}
	}
}
