package training

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// WriteTables writes the result as Markdown: one row per run (parameters, training FLOPs per
// token, speed, final held-out loss and the FLOPs to reach the threshold), then, when the runs
// were evaluated zero-shot, one row per run with each task's headline metric.
func (r *Result) WriteTables(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s family, %d x %d tokens per step, %d steps (%d tokens per run), %s, seed %d; threshold %.4f\n\n",
		r.Family, r.Batch, r.SeqLen, r.Steps, int64(r.Steps)*int64(r.Batch*r.SeqLen), dtypeOrDefault(r.DType), r.Seed, r.Threshold)
	b.WriteString("| run | pattern | routing | total params | active params | training GFLOP/token | tokens/s | wall s | held-out loss (mean of domains) | FLOPs to reach threshold |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, run := range r.Runs {
		reach := "not reached"
		if run.Reached {
			reach = fmt.Sprintf("%.3g", run.FLOPsToThreshold)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.1fM | %.1fM | %.3f | %.0f | %.0f | %.4f | %s |\n", run.Label, shortPattern(run.Pattern),
			run.Routing, float64(run.ParamsTotal)/1e6, float64(run.ParamsActive)/1e6, run.TrainFLOPsPerToken/1e9,
			run.TokensPerSec, run.WallSeconds, run.FinalHeldOutMean, reach)
	}
	chance := map[string]float64{} // by task, as the runs' results state it
	for _, run := range r.Runs {
		for _, z := range run.ZeroShot {
			chance[z.Task] = z.Chance
		}
	}
	if len(chance) > 0 {
		tasks := slices.Sorted(maps.Keys(chance))
		b.WriteString("\nZero-shot, headline metric per task (chance in the header; lambada: accuracy / perplexity)\n\n| run |")
		for _, t := range tasks {
			fmt.Fprintf(&b, " %s (%.2f) |", t, chance[t])
		}
		b.WriteString("\n|---|" + strings.Repeat("---:|", len(tasks)) + "\n")
		for _, run := range r.Runs {
			fmt.Fprintf(&b, "| %s |", run.Label)
			for _, t := range tasks {
				cell := "–"
				for _, z := range run.ZeroShot {
					if z.Task != t {
						continue
					}
					cell = fmt.Sprintf("%.3f %s (n=%d)", z.HeadlineValue(), z.Headline, z.Examples)
					if z.PPL > 0 {
						cell = fmt.Sprintf("%.3f / %.3g (n=%d)", z.Acc, z.PPL, z.Examples)
					}
				}
				fmt.Fprintf(&b, " %s |", cell)
			}
			b.WriteString("\n")
			if run.ZeroShotError != "" {
				fmt.Fprintf(&b, "\n%s: zero-shot evaluation failed: %s\n\n", run.Label, run.ZeroShotError)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func dtypeOrDefault(d string) string {
	if d == "" {
		return "float32"
	}
	return d
}

// shortPattern writes a block pattern made of one repeated unit as "unit×n" (r8r8r8 → r8×3).
func shortPattern(p string) string {
	for n := 1; n <= len(p)/2; n++ {
		if len(p)%n != 0 {
			continue
		}
		if unit := p[:n]; strings.Repeat(unit, len(p)/n) == p {
			return fmt.Sprintf("%s×%d", unit, len(p)/n)
		}
	}
	return p
}
