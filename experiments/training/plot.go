package training

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"blackmamba/experiments/results"
	"blackmamba/plots"
)

// Figure names written by PlotAll (each as .png and .svg).
const (
	FigLossVsFLOPs  = "heldout_vs_flops"
	FigLossVsTokens = "heldout_vs_tokens"
	FigFLOPsToReach = "flops_to_threshold"
	FigAblationLoss = "routing_ablation_heldout"
	FigAblationCV   = "routing_ablation_balance_cv"
)

// Figures returns PlotAll's figures by name: mean held-out loss against training FLOPs (log
// axis) and against tokens for the architecture comparison, the FLOPs each architecture needed
// to reach the common threshold, and for the routing ablation (when present) the held-out loss
// and the mean expert-balance coefficient of variation over training.
func Figures(r *Result) (map[string]*plots.Figure, error) {
	var main, abl []plots.Run
	for _, run := range r.Runs {
		pr := plots.Run{Name: run.Label, Records: withMean(run.Records)}
		if !run.Ablation {
			main = append(main, pr)
		}
		if run.Ablation || (run.MoE && run.Config == r.Family) {
			abl = append(abl, pr)
		}
	}
	if len(main) == 0 {
		return nil, fmt.Errorf("training plots: no architecture runs in the result")
	}
	figs := map[string]*plots.Figure{}
	y := "held_out:" + MeanDomain
	f, err := plots.TrainingCurves(main, "flops", y, plots.Axes{Title: fmt.Sprintf("%s family: held-out loss vs training compute", r.Family), YLabel: "mean held-out loss"})
	if err != nil {
		return nil, err
	}
	figs[FigLossVsFLOPs] = f
	f, err = plots.TrainingCurves(main, "tokens", y, plots.Axes{Title: fmt.Sprintf("%s family: held-out loss vs tokens", r.Family), YLabel: "mean held-out loss"})
	if err != nil {
		return nil, err
	}
	figs[FigLossVsTokens] = f
	var labels []string
	var vals []float64
	for _, run := range r.Runs {
		if !run.Ablation && run.Reached {
			labels = append(labels, run.Label)
			vals = append(vals, run.FLOPsToThreshold)
		}
	}
	if len(vals) > 0 {
		f, err = plots.BarChart(labels, vals, plots.Axes{Title: fmt.Sprintf("training FLOPs to reach mean held-out loss %.3f", r.Threshold), YLabel: "training FLOPs"})
		if err != nil {
			return nil, err
		}
		figs[FigFLOPsToReach] = f
	}
	if len(abl) > 1 {
		f, err = plots.TrainingCurves(abl, "tokens", y, plots.Axes{Title: "routing ablation: held-out loss", YLabel: "mean held-out loss"})
		if err != nil {
			return nil, err
		}
		figs[FigAblationLoss] = f
		var series []plots.Series
		for _, run := range abl {
			s := plots.Series{Name: run.Name}
			for _, rec := range run.Records {
				if cv, ok := meanCV(rec); ok {
					s.X = append(s.X, float64(rec.Tokens))
					s.Y = append(s.Y, cv)
				}
			}
			if len(s.X) > 0 {
				series = append(series, s)
			}
		}
		if len(series) > 0 {
			f, err = plots.LinePlot(series, plots.Axes{Title: "routing ablation: expert load imbalance during training",
				XLabel: "training tokens", YLabel: "tokens-per-expert CV (mean over MoE layers)"})
			if err != nil {
				return nil, err
			}
			figs[FigAblationCV] = f
		}
	}
	return figs, nil
}

// meanCV is the mean over layers of a record's balance coefficient of variation.
func meanCV(r results.TrainRecord) (float64, bool) {
	var s float64
	n := 0
	for _, v := range r.BalanceCV {
		if v == v { // skip NaN (a layer without tokens)
			s += v
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return s / float64(n), true
}

// PlotAll renders Figures(r) into dir as PNG and SVG and returns the written paths.
func PlotAll(r *Result, dir string) ([]string, error) {
	figs, err := Figures(r)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("training plots: %w", err)
	}
	var names []string
	for n := range figs {
		names = append(names, n)
	}
	sort.Strings(names)
	var paths []string
	for _, n := range names {
		for _, ext := range plots.Formats() {
			p := filepath.Join(dir, n+"."+ext)
			if err := plots.Render(figs[n], p); err != nil {
				return paths, err
			}
			paths = append(paths, p)
		}
	}
	return paths, nil
}
