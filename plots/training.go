package plots

import (
	"fmt"
	"strings"

	"blackmamba/experiments/results"
)

// Run is a named training log, e.g. one architecture of the FLOPs-vs-loss comparison.
type Run struct {
	Name    string
	Records []results.TrainRecord
}

// TrainingCurves draws one loss curve per run. x is "flops" (cumulative training FLOPs, log
// axis), "tokens" or "step"; y is "loss" (training loss) or "held_out:<domain>" (records
// without that domain are skipped).
func TrainingCurves(runs []Run, x, y string, ax Axes) (*Figure, error) {
	var series []Series
	for _, r := range runs {
		s := Series{Name: r.Name}
		for _, rec := range r.Records {
			var yv float64
			switch {
			case y == "loss":
				yv = rec.Loss
			case strings.HasPrefix(y, "held_out:"):
				v, ok := rec.HeldOut[strings.TrimPrefix(y, "held_out:")]
				if !ok {
					continue
				}
				yv = v
			default:
				return nil, fmt.Errorf("plots: training curves: y %q: want \"loss\" or \"held_out:<domain>\"", y)
			}
			var xv float64
			switch x {
			case "flops":
				xv = rec.FLOPs
			case "tokens":
				xv = float64(rec.Tokens)
			case "step":
				xv = float64(rec.Step)
			default:
				return nil, fmt.Errorf("plots: training curves: x %q: want \"flops\", \"tokens\" or \"step\"", x)
			}
			s.X = append(s.X, xv)
			s.Y = append(s.Y, yv)
		}
		if len(s.X) == 0 {
			return nil, fmt.Errorf("plots: training curves: run %q has no record with %s", r.Name, y)
		}
		series = append(series, s)
	}
	if ax.XLabel == "" {
		ax.XLabel = map[string]string{"flops": "training FLOPs", "tokens": "training tokens", "step": "step"}[x]
	}
	if ax.YLabel == "" {
		ax.YLabel = map[bool]string{true: "training loss", false: "held-out loss (" + strings.TrimPrefix(y, "held_out:") + ")"}[y == "loss"]
	}
	if x == "flops" {
		ax.LogX = true
	}
	return LinePlot(series, ax)
}
