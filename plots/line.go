package plots

import (
	"fmt"
	"image/color"
	"math"

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
	named := 0
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
			named++
		}
	}
	var free bool
	p.Legend.Top, p.Legend.Left, free = legendCorner(series, ax, named)
	if !free {
		// Every corner has data under it: raise the top of the y axis so that the data keep
		// below the legend, top right.
		addHeadroom(p, series, ax, legendHeight(named))
	}
	if p.Legend.Left {
		p.Legend.XOffs = vg.Points(12)
	}
	if !p.Legend.Top {
		p.Legend.YOffs = vg.Points(4)
	}
	w, h := ax.size(DefaultWidth, DefaultHeight)
	return single(p, w, h), nil
}

// legendHeight is the share of the data area's height taken by a legend of n entries.
func legendHeight(n int) float64 { return min(0.07*float64(n)+0.04, 0.9) }

// addHeadroom sets the y axis' range so that the data fill the lower 1-h of it.
func addHeadroom(p *plot.Plot, series []Series, ax Axes, h float64) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range series {
		for _, y := range s.Y {
			lo, hi = min(lo, y), max(hi, y)
		}
	}
	if !(hi > lo) {
		return
	}
	if ax.LogY {
		p.Y.Min, p.Y.Max = lo, math.Exp(math.Log(lo)+(math.Log(hi)-math.Log(lo))/(1-h))
		return
	}
	p.Y.Min, p.Y.Max = lo, lo+(hi-lo)/(1-h)
}

// legendCorner picks the corner of the data area where the legend of n entries covers no data
// point (the points of the line segments between markers included, sampled), in the order top
// right, top left, bottom right, bottom left; free is false, with top right, when every corner
// is covered. The legend is taken to span 45% of the width and legendHeight(n) of the height,
// in the axes' (log or linear) coordinates of the data's range.
func legendCorner(series []Series, ax Axes, n int) (top, left, free bool) {
	if n == 0 {
		return true, false, true
	}
	tx := func(v float64) float64 {
		if ax.LogX {
			return math.Log(v)
		}
		return v
	}
	ty := func(v float64) float64 {
		if ax.LogY {
			return math.Log(v)
		}
		return v
	}
	minX, maxX, minY, maxY := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range series {
		for i := range s.X {
			x, y := tx(s.X[i]), ty(s.Y[i])
			minX, maxX, minY, maxY = min(minX, x), max(maxX, x), min(minY, y), max(maxY, y)
		}
	}
	if !(maxX > minX) || !(maxY > minY) {
		return true, false, true
	}
	w, h := 0.45, legendHeight(n)
	type corner struct{ top, left bool }
	corners := []corner{{true, false}, {true, true}, {false, false}, {false, true}}
	counts := make([]int, len(corners))
	count := func(fx, fy float64) {
		for k, c := range corners {
			inX := fx >= 1-w
			if c.left {
				inX = fx <= w
			}
			inY := fy >= 1-h
			if !c.top {
				inY = fy <= h
			}
			if inX && inY {
				counts[k]++
			}
		}
	}
	const steps = 8 // samples per segment
	for _, s := range series {
		for i := range s.X {
			fx, fy := (tx(s.X[i])-minX)/(maxX-minX), (ty(s.Y[i])-minY)/(maxY-minY)
			count(fx, fy)
			if i == 0 {
				continue
			}
			px, py := (tx(s.X[i-1])-minX)/(maxX-minX), (ty(s.Y[i-1])-minY)/(maxY-minY)
			for j := 1; j < steps; j++ {
				f := float64(j) / steps
				count(px+(fx-px)*f, py+(fy-py)*f)
			}
		}
	}
	for k, c := range corners {
		if counts[k] == 0 {
			return c.top, c.left, true
		}
	}
	return true, false, false
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
