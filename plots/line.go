package plots

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Series is one curve: Y[i] at X[i].
type Series struct {
	Name string
	X, Y []float64
}

// LinePlot draws each series as a line with point markers, with a legend of the series names.
// Errors: no series, an empty series, X and Y of different lengths, a non-finite value, or a
// value ≤ 0 on a logarithmic axis (each error names the series and index).
func LinePlot(series []Series, ax Axes) (*Figure, error) {
	if len(series) == 0 {
		return nil, fmt.Errorf("plots: line plot %q: no series", ax.Title)
	}
	p := ax.newPlot()
	placeLegend(p)
	for i, s := range series {
		what := fmt.Sprintf("line plot %q, series %q", ax.Title, s.Name)
		if len(s.X) == 0 {
			return nil, fmt.Errorf("plots: %s: empty series", what)
		}
		if len(s.X) != len(s.Y) {
			return nil, fmt.Errorf("plots: %s: %d X values and %d Y values", what, len(s.X), len(s.Y))
		}
		if err := checkValues(what, "X", s.X, ax.LogX); err != nil {
			return nil, err
		}
		if err := checkValues(what, "Y", s.Y, ax.LogY); err != nil {
			return nil, err
		}
		xys := make(plotter.XYs, len(s.X))
		for j := range s.X {
			xys[j].X, xys[j].Y = s.X[j], s.Y[j]
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, fmt.Errorf("plots: %s: %w", what, err)
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		line.Dashes = plotutil.Dashes(i / len(plotutil.DefaultColors))
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		points.Radius = vg.Points(2)
		p.Add(line, points)
		if s.Name != "" {
			p.Legend.Add(s.Name, line, points)
		}
	}
	w, h := ax.size(DefaultWidth, DefaultHeight)
	return single(p, w, h), nil
}

// newGrid returns light grid lines.
func newGrid() *plotter.Grid {
	g := plotter.NewGrid()
	g.Vertical = draw.LineStyle{Color: gridColor, Width: vg.Points(0.5)}
	g.Horizontal = draw.LineStyle{Color: gridColor, Width: vg.Points(0.5)}
	return g
}

var gridColor = color.Gray{Y: 225}

// placeLegend puts the legend in the top right corner, inside the plot's margins.
func placeLegend(p *plot.Plot) {
	p.Legend.Top = true
	p.Legend.XOffs = -vg.Points(12)
	p.Legend.YOffs = -vg.Points(4)
}
