package plots

import (
	"fmt"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// checkBarAxes rejects scales that bar charts cannot show: categories are not numbers, and
// bars start at zero, which a logarithmic axis cannot show.
func checkBarAxes(kind string, ax Axes) error {
	if ax.LogX || ax.LogY {
		return fmt.Errorf("plots: %s %q: bar charts need linear axes (bars start at 0)", kind, ax.Title)
	}
	return nil
}

// BarChart draws one bar per label.
func BarChart(labels []string, values []float64, ax Axes) (*Figure, error) {
	what := fmt.Sprintf("bar chart %q", ax.Title)
	if err := checkBarAxes("bar chart", ax); err != nil {
		return nil, err
	}
	if len(values) == 0 {
		return nil, fmt.Errorf("plots: %s: no values", what)
	}
	if len(labels) != len(values) {
		return nil, fmt.Errorf("plots: %s: %d labels for %d values", what, len(labels), len(values))
	}
	if err := checkValues(what, "values", values, false); err != nil {
		return nil, err
	}
	p := ax.newPlot()
	w, h := ax.size(DefaultWidth, DefaultHeight)
	bars, err := plotter.NewBarChart(plotter.Values(values), barWidth(w, len(values), 1))
	if err != nil {
		return nil, fmt.Errorf("plots: %s: %w", what, err)
	}
	bars.Color = plotutil.Color(0)
	bars.LineStyle.Width = 0
	p.Add(bars)
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.5, float64(len(values))-0.5
	return single(p, w, h), nil
}

// barWidth returns the width of one bar so that groups of perGroup bars fill about 80% of
// each category's slot.
func barWidth(figWidth vg.Length, categories, perGroup int) vg.Length {
	plotWidth := figWidth - vg.Inch // axes and margins
	return vg.Length(0.8 * float64(plotWidth) / float64(categories*perGroup))
}

// Group is one series of a grouped bar chart: one value per category.
type Group struct {
	Name   string
	Values []float64
}

// GroupedBars draws, for each category, one bar per group side by side, with a legend of the
// group names.
func GroupedBars(categories []string, groups []Group, ax Axes) (*Figure, error) {
	what := fmt.Sprintf("grouped bar chart %q", ax.Title)
	if err := checkBarAxes("grouped bar chart", ax); err != nil {
		return nil, err
	}
	if len(categories) == 0 || len(groups) == 0 {
		return nil, fmt.Errorf("plots: %s: %d categories and %d groups, need at least one of each",
			what, len(categories), len(groups))
	}
	p := ax.newPlot()
	placeLegend(p)
	w, h := ax.size(DefaultWidth, DefaultHeight)
	bw := barWidth(w, len(categories), len(groups))
	top := 0.0
	for i, gr := range groups {
		gw := fmt.Sprintf("%s, group %q", what, gr.Name)
		if len(gr.Values) != len(categories) {
			return nil, fmt.Errorf("plots: %s: %d values for %d categories", gw, len(gr.Values), len(categories))
		}
		if err := checkValues(gw, "values", gr.Values, false); err != nil {
			return nil, err
		}
		bars, err := plotter.NewBarChart(plotter.Values(gr.Values), bw)
		if err != nil {
			return nil, fmt.Errorf("plots: %s: %w", gw, err)
		}
		for _, v := range gr.Values {
			top = math.Max(top, v)
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		bars.Offset = vg.Length(float64(i)-float64(len(groups)-1)/2) * bw
		p.Add(bars)
		p.Legend.Add(gr.Name, bars)
	}
	p.NominalX(categories...)
	// Grouped bars are offset from their category: fix the range so none is cut off.
	p.X.Min, p.X.Max = -0.5, float64(len(categories))-0.5
	// Head room for the legend (one line per group) above the tallest bar.
	p.Y.Min, p.Y.Max = math.Min(0, p.Y.Min), top*(1.1+0.07*float64(len(groups)))
	return single(p, w, h), nil
}

// Panel is one small bar chart of a BarGrid.
type Panel struct {
	Title  string
	Values []float64
}

// GridOptions configures a BarGrid.
type GridOptions struct {
	// Title is drawn above the grid; XLabel and YLabel label every panel.
	Title, XLabel, YLabel string
	// Cols is the number of panels per row (default 4).
	Cols int
	// Ref, if > 0, draws a dashed horizontal line at that value in every panel (e.g. the
	// count of a perfectly balanced layer).
	Ref float64
	// PanelWidth and PanelHeight size each panel (defaults 2.4 × 1.9 inches).
	PanelWidth, PanelHeight vg.Length
}

// BarGrid composes one small bar chart per panel (e.g. tokens per expert, one panel per MoE
// layer) into a single image, all panels sharing the value range so they compare directly.
// Bars are labelled 0..len−1.
func BarGrid(panels []Panel, opt GridOptions) (*Figure, error) {
	what := fmt.Sprintf("bar grid %q", opt.Title)
	if len(panels) == 0 {
		return nil, fmt.Errorf("plots: %s: no panels", what)
	}
	if opt.Cols <= 0 {
		opt.Cols = 4
	}
	if opt.PanelWidth <= 0 {
		opt.PanelWidth = 2.4 * vg.Inch
	}
	if opt.PanelHeight <= 0 {
		opt.PanelHeight = 1.9 * vg.Inch
	}
	cols := min(opt.Cols, len(panels))
	rows := (len(panels) + cols - 1) / cols
	ymax := opt.Ref
	for _, pn := range panels {
		pw := fmt.Sprintf("%s, panel %q", what, pn.Title)
		if len(pn.Values) == 0 {
			return nil, fmt.Errorf("plots: %s: no values", pw)
		}
		if err := checkValues(pw, "values", pn.Values, false); err != nil {
			return nil, err
		}
		for _, v := range pn.Values {
			ymax = math.Max(ymax, v)
		}
	}
	grid := make([][]*plot.Plot, rows)
	for r := range grid {
		grid[r] = make([]*plot.Plot, cols)
	}
	var all []*plot.Plot
	for i, pn := range panels {
		p := Axes{Title: pn.Title, XLabel: opt.XLabel, YLabel: opt.YLabel}.newPlot()
		bars, err := plotter.NewBarChart(plotter.Values(pn.Values), barWidth(opt.PanelWidth, len(pn.Values), 1))
		if err != nil {
			return nil, fmt.Errorf("plots: %s, panel %q: %w", what, pn.Title, err)
		}
		bars.Color = plotutil.Color(0)
		bars.LineStyle.Width = 0
		p.Add(bars)
		if opt.Ref > 0 {
			ref := plotter.NewFunction(func(float64) float64 { return opt.Ref })
			ref.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			ref.Color = plotutil.Color(1)
			p.Add(ref)
		}
		labels := make([]string, len(pn.Values))
		for j := range labels {
			if len(pn.Values) <= 16 || j%4 == 0 {
				labels[j] = strconv.Itoa(j)
			}
		}
		p.NominalX(labels...)
		p.X.Min, p.X.Max = -0.5, float64(len(pn.Values))-0.5
		p.Y.Min, p.Y.Max = 0, ymax*1.05
		grid[i/cols][i%cols] = p
		all = append(all, p)
	}
	titleH := vg.Length(0)
	var titleStyle text.Style
	if opt.Title != "" {
		titleStyle = plot.New().Title.TextStyle
		titleStyle.XAlign = draw.XCenter
		titleStyle.YAlign = draw.YCenter
		titleH = titleStyle.Height(opt.Title) + vg.Points(10)
	}
	f := &Figure{
		Width:  vg.Length(cols) * opt.PanelWidth,
		Height: vg.Length(rows)*opt.PanelHeight + titleH,
		Plots:  all,
	}
	f.draw = func(dc draw.Canvas) {
		dc.SetColor(plot.New().BackgroundColor)
		dc.Fill(dc.Rectangle.Path())
		body := draw.Crop(dc, 0, 0, 0, -titleH)
		tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Points(6), PadY: vg.Points(6),
			PadTop: vg.Points(2), PadBottom: vg.Points(2), PadLeft: vg.Points(2), PadRight: vg.Points(2)}
		canvases := plot.Align(grid, tiles, body)
		for r := range grid {
			for c, p := range grid[r] {
				if p != nil {
					p.Draw(canvases[r][c])
				}
			}
		}
		if opt.Title != "" {
			dc.FillText(titleStyle, vg.Point{X: (dc.Min.X + dc.Max.X) / 2, Y: dc.Max.Y - titleH/2}, opt.Title)
		}
	}
	return f, nil
}
