// Package plots renders experiment results (loss curves, latency curves, expert balance) as
// PNG or SVG with gonum/plot. It only draws what it is given: results are computed by the
// experiment drivers and read back from their typed outputs (package results), never
// recomputed here.
//
// Every builder returns a *Figure; Render writes it to a file chosen by extension and Bytes
// returns the encoded image (for notebooks: gonbui.DisplayPNG(plots.Bytes(f, "png"))).
package plots

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Figure is a drawable image of a given size: a single plot or a composition of several.
type Figure struct {
	// Width and Height of the image (1 vg.Inch = 96 pixels in PNG).
	Width, Height vg.Length
	// Plots are the figure's plots, in drawing order, for further customisation.
	Plots []*plot.Plot
	draw  func(dc draw.Canvas)
}

// single wraps one plot as a figure.
func single(p *plot.Plot, w, h vg.Length) *Figure {
	return &Figure{Width: w, Height: h, Plots: []*plot.Plot{p}, draw: p.Draw}
}

// Default figure sizes.
var (
	DefaultWidth  = 7 * vg.Inch
	DefaultHeight = 4.5 * vg.Inch
)

// Axes holds the labels and scales common to all figures.
type Axes struct {
	Title, XLabel, YLabel string
	// LogX, LogY select logarithmic axes; every value on such an axis must be > 0.
	LogX, LogY bool
	// Width and Height override the default figure size when > 0.
	Width, Height vg.Length
}

func (a Axes) size(w, h vg.Length) (vg.Length, vg.Length) {
	if a.Width > 0 {
		w = a.Width
	}
	if a.Height > 0 {
		h = a.Height
	}
	return w, h
}

// newPlot returns a plot with the labels and scales of a.
func (a Axes) newPlot() *plot.Plot {
	p := plot.New()
	p.Title.Text = a.Title
	p.X.Label.Text = a.XLabel
	p.Y.Label.Text = a.YLabel
	if a.LogX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = logTicks{}
	}
	if a.LogY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
	}
	p.Add(newGrid())
	return p
}

// Formats returns the image formats Render and Bytes accept.
func Formats() []string { return []string{"png", "svg"} }

// Bytes encodes f as format ("png" or "svg").
func Bytes(f *Figure, format string) ([]byte, error) {
	if f == nil || f.draw == nil {
		return nil, fmt.Errorf("plots: nil figure")
	}
	format = strings.ToLower(format)
	if format != "png" && format != "svg" {
		return nil, fmt.Errorf("plots: format %q: want one of %v", format, Formats())
	}
	c, err := draw.NewFormattedCanvas(f.Width, f.Height, format)
	if err != nil {
		return nil, fmt.Errorf("plots: %w", err)
	}
	f.draw(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("plots: encoding %s: %w", format, err)
	}
	return buf.Bytes(), nil
}

// Render writes f to path; the extension (.png or .svg) selects the format. The file is
// written to a temporary name and renamed, so a reader never sees a partial image.
func Render(f *Figure, path string) error {
	ext := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	if ext != "png" && ext != "svg" {
		return fmt.Errorf("plots: output %s: extension %q, want .png or .svg", path, filepath.Ext(path))
	}
	b, err := Bytes(f, ext)
	if err != nil {
		return fmt.Errorf("%w (output %s)", err, path)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("plots: writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("plots: writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("plots: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("plots: %w", err)
	}
	return nil
}

// checkFinite reports the first non-finite value of vs, or on a log axis the first value
// ≤ 0, naming what (a series or bar group) and the index.
func checkValues(what, axis string, vs []float64, log bool) error {
	for i, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("plots: %s: %s[%d] = %v is not finite", what, axis, i, v)
		}
		if log && v <= 0 {
			return fmt.Errorf("plots: %s: %s[%d] = %v, but the %s axis is logarithmic (values must be > 0)",
				what, axis, i, v, strings.ToLower(axis))
		}
	}
	return nil
}

// logTicks marks a logarithmic axis at 1, 2 and 5 times each power of ten, labelled, so that a
// range narrower than a decade still has labels (gonum's LogTicks labels powers of ten only).
type logTicks struct{}

// Ticks returns the ticks between lo and hi (both > 0).
func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(lo > 0) || !(hi > lo) {
		return plot.LogTicks{Prec: -1}.Ticks(lo, hi)
	}
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		p := math.Pow(10, e)
		for _, m := range []float64{1, 2, 5} {
			v := m * p
			if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', 3, 64)})
			}
		}
		for m := 2.0; m < 10; m++ { // unlabelled minor ticks
			if v := m * p; m != 2 && m != 5 && v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v})
			}
		}
	}
	if len(ticks) == 0 || countLabels(ticks) < 2 {
		// Narrower than 1-2-5 spacing: label the ends.
		ticks = append(ticks, plot.Tick{Value: lo, Label: strconv.FormatFloat(lo, 'g', 3, 64)},
			plot.Tick{Value: hi, Label: strconv.FormatFloat(hi, 'g', 3, 64)})
	}
	return ticks
}

func countLabels(ticks []plot.Tick) int {
	n := 0
	for _, t := range ticks {
		if t.Label != "" {
			n++
		}
	}
	return n
}
