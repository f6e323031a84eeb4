package plots

import (
	"fmt"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Matrix is a rows × cols grid of values (e.g. MoE layers × experts) as a plotter.GridXYZ:
// column c is drawn at x = c and row r at y = r.
type Matrix [][]float64

// Dims returns the number of columns and rows.
func (m Matrix) Dims() (c, r int) { return len(m[0]), len(m) }

// Z returns the value at column c, row r.
func (m Matrix) Z(c, r int) float64 { return m[r][c] }

// X returns the x coordinate of column c.
func (m Matrix) X(c int) float64 { return float64(c) }

// Y returns the y coordinate of row r.
func (m Matrix) Y(r int) float64 { return float64(r) }

var _ plotter.GridXYZ = Matrix(nil)

// HeatOptions configures a HeatMap.
type HeatOptions struct {
	Axes
	// ZLabel labels the colour bar.
	ZLabel string
	// Diverging uses a blue–white–red map centred on Center (e.g. the balanced tokens per
	// expert), symmetric around it; otherwise a sequential map from the minimum to the maximum.
	Diverging bool
	Center    float64
}

// HeatMap draws m (rows × cols) as coloured cells with a colour bar, rows labelled by
// rowLabels (bottom to top) and columns by colLabels.
func HeatMap(m [][]float64, rowLabels, colLabels []string, opt HeatOptions) (*Figure, error) {
	what := fmt.Sprintf("heat map %q", opt.Title)
	if opt.LogX || opt.LogY {
		return nil, fmt.Errorf("plots: %s: rows and columns are categories, logarithmic axes do not apply", what)
	}
	if len(m) == 0 || len(m[0]) == 0 {
		return nil, fmt.Errorf("plots: %s: empty matrix", what)
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for r, row := range m {
		if len(row) != len(m[0]) {
			return nil, fmt.Errorf("plots: %s: row %d has %d values, row 0 has %d", what, r, len(row), len(m[0]))
		}
		if err := checkValues(fmt.Sprintf("%s, row %d", what, r), "values", row, false); err != nil {
			return nil, err
		}
		for _, v := range row {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if len(rowLabels) != len(m) || len(colLabels) != len(m[0]) {
		return nil, fmt.Errorf("plots: %s: %d row labels and %d column labels for a %d × %d matrix",
			what, len(rowLabels), len(colLabels), len(m), len(m[0]))
	}
	var cm palette.ColorMap
	if opt.Diverging {
		d := math.Max(math.Abs(hi-opt.Center), math.Abs(lo-opt.Center))
		if d == 0 {
			d = math.Max(1, math.Abs(opt.Center)) * 1e-3
		}
		cm = moreland.SmoothBlueRed()
		lo, hi = opt.Center-d, opt.Center+d
	} else {
		cm = moreland.ExtendedBlackBody()
		if lo == hi {
			lo, hi = lo-0.5, hi+0.5
		}
	}
	cm.SetMin(lo)
	cm.SetMax(hi)
	p := plot.New()
	p.Title.Text = opt.Title
	p.X.Label.Text = opt.XLabel
	p.Y.Label.Text = opt.YLabel
	hm := plotter.NewHeatMap(Matrix(m), cm.Palette(255))
	hm.Min, hm.Max = lo, hi
	p.Add(hm)
	p.NominalX(colLabels...)
	p.NominalY(rowLabels...)
	p.X.Min, p.X.Max = -0.5, float64(len(m[0]))-0.5
	p.Y.Min, p.Y.Max = -0.5, float64(len(m))-0.5

	bar := plot.New()
	bar.Add(&plotter.ColorBar{ColorMap: cm, Vertical: true})
	bar.HideX()
	bar.Y.Label.Text = opt.ZLabel
	bar.Title.Text = " " // aligns the bar with the map below the title

	w, h := opt.size(DefaultWidth, DefaultHeight)
	barW := 1.2 * vg.Inch
	f := &Figure{Width: w, Height: h, Plots: []*plot.Plot{p, bar}}
	f.draw = func(dc draw.Canvas) {
		p.Draw(draw.Crop(dc, 0, -barW, 0, 0))
		bar.Draw(draw.Crop(dc, dc.Max.X-dc.Min.X-barW, 0, 0, 0))
	}
	return f, nil
}
