package balance

import (
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"strings"

	"blackmamba/experiments/results"
	"blackmamba/plots"
)

// renderBoth writes f as base.png and base.svg.
func renderBoth(f *plots.Figure, base string) error {
	for _, ext := range plots.Formats() {
		if err := plots.Render(f, base+"."+ext); err != nil {
			return err
		}
	}
	return nil
}

// fileName turns a label into a file-name fragment.
func fileName(parts ...string) string {
	s := strings.Join(parts, "_")
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '-'
	}, s)
}

// PlotCounts draws the tokens per expert of each MoE block of r as a grid of bar charts, with
// the fair share (tokens/E) as a dashed line, into base.png and base.svg.
func PlotCounts(r Result, base string) error {
	if len(r.Layers) == 0 {
		return fmt.Errorf("balance: plot of %s %s %s: no layers", r.Model, r.Mode, r.Domain)
	}
	var panels []plots.Panel
	fair := 0.0
	for _, l := range r.Layers {
		panels = append(panels, plots.Panel{Title: fmt.Sprintf("layer %d", l.Layer), Values: l.Counts})
		var tot float64
		for _, c := range l.Counts {
			tot += c
		}
		fair = math.Max(fair, tot/float64(len(l.Counts)))
	}
	f, err := plots.BarGrid(panels, plots.GridOptions{
		Title:  fmt.Sprintf("%s: tokens per expert (%s routing, %s, %d tokens)", r.Model, r.Mode, r.Domain, r.Tokens),
		XLabel: "expert", YLabel: "tokens", Ref: fair,
	})
	if err != nil {
		return err
	}
	return renderBoth(f, base)
}

// PlotShares draws a heat map of the share of tokens (layers × experts) of r into base.png
// and base.svg, diverging around the fair share 1/E.
func PlotShares(r Result, base string) error {
	if len(r.Layers) == 0 {
		return fmt.Errorf("balance: heat map of %s %s %s: no layers", r.Model, r.Mode, r.Domain)
	}
	E := len(r.Layers[0].Counts)
	m := make([][]float64, len(r.Layers))
	rows := make([]string, len(r.Layers))
	for i, l := range r.Layers {
		if len(l.Counts) != E {
			return fmt.Errorf("balance: heat map of %s %s: layer %d has %d experts, layer %d has %d", r.Model, r.Mode, l.Layer, len(l.Counts), r.Layers[0].Layer, E)
		}
		var tot float64
		for _, c := range l.Counts {
			tot += c
		}
		m[i] = make([]float64, E)
		for e, c := range l.Counts {
			m[i][e] = c / tot
		}
		rows[i] = fmt.Sprint(l.Layer)
	}
	cols := make([]string, E)
	for e := range cols {
		cols[e] = fmt.Sprint(e)
	}
	f, err := plots.HeatMap(m, rows, cols, plots.HeatOptions{
		Axes:   plots.Axes{Title: fmt.Sprintf("%s: share of tokens (%s routing, %s)", r.Model, r.Mode, r.Domain), XLabel: "expert", YLabel: "layer"},
		ZLabel: "share", Diverging: true, Center: 1 / float64(E),
	})
	if err != nil {
		return err
	}
	return renderBoth(f, base)
}

// PlotAll draws, for every result of domain DomainAll in results, the bar grid
// (balance_<model>_<mode>.png/.svg) and the heat map (shares_<model>_<mode>.png/.svg) into
// dir, plus, when ablation is not empty, a bar chart of the mean CV per run and mode
// (balance_ablation.png/.svg; keys are run names).
func PlotAll(rs []Result, ablation map[string][]Result, dir string) error {
	n := 0
	for _, r := range rs {
		if r.Domain != DomainAll {
			continue
		}
		n++
		if err := PlotCounts(r, filepath.Join(dir, fileName("balance", r.Model, r.Mode))); err != nil {
			return err
		}
		if err := PlotShares(r, filepath.Join(dir, fileName("shares", r.Model, r.Mode))); err != nil {
			return err
		}
	}
	if n == 0 && len(rs) > 0 {
		return fmt.Errorf("balance: no result for domain %q to plot", DomainAll)
	}
	if len(ablation) == 0 {
		return nil
	}
	runs := make([]string, 0, len(ablation))
	for k := range ablation {
		runs = append(runs, k)
	}
	sort.Strings(runs)
	modes := []string{}
	seen := map[string]bool{}
	for _, k := range runs {
		for _, r := range ablation[k] {
			m := modeLabel(r)
			if r.Domain == DomainAll && !seen[m] {
				seen[m] = true
				modes = append(modes, m)
			}
		}
	}
	var groups []plots.Group
	for _, m := range modes {
		g := plots.Group{Name: m, Values: make([]float64, len(runs))}
		for i, k := range runs {
			for _, r := range ablation[k] {
				if r.Domain == DomainAll && modeLabel(r) == m {
					g.Values[i] = r.MeanCV()
				}
			}
		}
		groups = append(groups, g)
	}
	f, err := plots.GroupedBars(runs, groups, plots.Axes{Title: "Expert balance by training routing (held-out text)", XLabel: "run", YLabel: "mean CV of tokens per expert"})
	if err != nil {
		return err
	}
	return renderBoth(f, filepath.Join(dir, "balance_ablation"))
}

// modeLabel is "inference (argmax)" or "training route".
func modeLabel(r Result) string {
	if r.Mode == ModeArgmax {
		return "inference (argmax)"
	}
	return "training route"
}

// PlotBalanceOverTraining draws, for each run (key: run name), the coefficient of variation of
// tokens per expert averaged over MoE layers against the training step, from the runs'
// metrics records (records without BalanceCV are skipped), into path (.png or .svg; the
// other format is written beside it too).
func PlotBalanceOverTraining(runs map[string][]results.TrainRecord, path string) error {
	names := make([]string, 0, len(runs))
	for k := range runs {
		names = append(names, k)
	}
	sort.Strings(names)
	var series []plots.Series
	for _, k := range names {
		s := plots.Series{Name: k}
		for _, rec := range runs[k] {
			if len(rec.BalanceCV) == 0 {
				continue
			}
			var sum float64
			n := 0
			for _, v := range rec.BalanceCV {
				if !math.IsNaN(v) && !math.IsInf(v, 0) {
					sum += v
					n++
				}
			}
			if n == 0 {
				continue
			}
			s.X = append(s.X, float64(rec.Step))
			s.Y = append(s.Y, sum/float64(n))
		}
		if len(s.X) > 0 {
			series = append(series, s)
		}
	}
	if len(series) == 0 {
		return fmt.Errorf("balance: balance over training: no run has records with balance_cv")
	}
	f, err := plots.LinePlot(series, plots.Axes{Title: "Expert balance during training", XLabel: "step", YLabel: "CV of tokens per expert (mean over MoE layers)"})
	if err != nil {
		return err
	}
	ext := filepath.Ext(path)
	return renderBoth(f, strings.TrimSuffix(path, ext))
}
