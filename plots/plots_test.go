package plots

import (
	"bytes"
	"encoding/xml"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gonum.org/v1/plot"

	"blackmamba/experiments/results"
)

// checkPNG decodes a PNG and checks its pixel size (96 dpi) and that it is not blank: a
// drawn chart has many distinct colours (text antialiasing, lines, fills).
func checkPNG(t *testing.T, b []byte, f *Figure, minColours int) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a valid PNG: %v", err)
	}
	wantW, wantH := int(math.Round(f.Width.Dots(96))), int(math.Round(f.Height.Dots(96)))
	if sz := img.Bounds().Size(); sz.X != wantW || sz.Y != wantH {
		t.Errorf("PNG is %dx%d, want %dx%d", sz.X, sz.Y, wantW, wantH)
	}
	colours := map[[4]uint32]bool{}
	bnd := img.Bounds()
	for y := bnd.Min.Y; y < bnd.Max.Y; y += 2 {
		for x := bnd.Min.X; x < bnd.Max.X; x += 2 {
			r, g, b, a := img.At(x, y).RGBA()
			colours[[4]uint32{r, g, b, a}] = true
		}
	}
	if len(colours) < minColours {
		t.Errorf("PNG has %d distinct colours, want at least %d (blank image?)", len(colours), minColours)
	}
}

// checkSVG parses the SVG as XML, checks the root element and looks for the given texts.
func checkSVG(t *testing.T, b []byte, texts ...string) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	root := ""
	for {
		tok, err := dec.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("SVG is not valid XML: %v", err)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Errorf("SVG root element is %q, want svg", root)
	}
	for _, s := range texts {
		if !bytes.Contains(b, []byte(s)) {
			t.Errorf("SVG lacks the text %q", s)
		}
	}
}

func TestFiguresRender(t *testing.T) {
	dir := t.TempDir()
	line, err := LinePlot([]Series{
		{Name: "BlackMamba", X: []float64{1e15, 1e16, 1e17}, Y: []float64{4.1, 3.2, 2.7}},
		{Name: "Transformer", X: []float64{1e15, 1e16, 1e17}, Y: []float64{4.3, 3.5, 3.0}},
	}, Axes{Title: "held-out loss vs training FLOPs", XLabel: "FLOPs", YLabel: "loss", LogX: true})
	if err != nil {
		t.Fatal(err)
	}
	loglog, err := LinePlot([]Series{{Name: "mamba", X: []float64{128, 1024, 8192}, Y: []float64{0.1, 0.8, 6.4}}},
		Axes{Title: "latency", XLabel: "L", YLabel: "s", LogX: true, LogY: true})
	if err != nil {
		t.Fatal(err)
	}
	bars, err := BarChart([]string{"dense", "moe", "mamba", "blackmamba"}, []float64{8e17, 5e17, 6e17, 3e17},
		Axes{Title: "FLOPs to reach loss 3.0", YLabel: "FLOPs"})
	if err != nil {
		t.Fatal(err)
	}
	grouped, err := GroupedBars([]string{"a1", "a8", "r1", "r8"},
		[]Group{{"loss 3.5", []float64{1, 2, 3, 4}}, {"loss 3.0", []float64{2, 3, 4, 5}}, {"loss 2.8", []float64{3, 4, 5, 6}}},
		Axes{Title: "grouped"})
	if err != nil {
		t.Fatal(err)
	}
	var panels []Panel
	var heat [][]float64
	var rows []string
	for l := 0; l < 6; l++ {
		v := make([]float64, 8)
		for e := range v {
			v[e] = 1000 + float64((l*37+e*91)%400)
		}
		panels = append(panels, Panel{Title: "layer " + string(rune('0'+l)), Values: v})
		heat = append(heat, v)
		rows = append(rows, string(rune('0'+l)))
	}
	grid, err := BarGrid(panels, GridOptions{Title: "tokens per expert", XLabel: "expert", Cols: 3, Ref: 1200})
	if err != nil {
		t.Fatal(err)
	}
	hm, err := HeatMap(heat, rows, []string{"0", "1", "2", "3", "4", "5", "6", "7"},
		HeatOptions{Axes: Axes{Title: "tokens per expert", XLabel: "expert", YLabel: "layer"},
			ZLabel: "tokens", Diverging: true, Center: 1200})
	if err != nil {
		t.Fatal(err)
	}
	curves, err := TrainingCurves([]Run{{Name: "r8", Records: []results.TrainRecord{
		{Step: 10, FLOPs: 1e12, Loss: 4, HeldOut: map[string]float64{"code": 4.2}},
		{Step: 20, FLOPs: 2e12, Loss: 3.5},
		{Step: 30, FLOPs: 3e12, Loss: 3.2, HeldOut: map[string]float64{"code": 3.4}},
	}}}, "flops", "held_out:code", Axes{Title: "curves"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(curves.Plots); n != 1 {
		t.Fatalf("training curves: %d plots", n)
	}
	for _, tc := range []struct {
		name  string
		f     *Figure
		texts []string
	}{
		{"line", line, []string{"BlackMamba", "Transformer", "held-out loss vs training FLOPs"}},
		{"loglog", loglog, []string{"latency"}},
		{"bars", bars, []string{"blackmamba", "FLOPs to reach loss 3.0"}},
		{"grouped", grouped, []string{"loss 2.8", "a8"}},
		{"grid", grid, []string{"tokens per expert", "layer 5"}},
		{"heat", hm, []string{"tokens", "layer"}},
		{"curves", curves, []string{"held-out loss (code)", "training FLOPs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, ext := range Formats() {
				p := filepath.Join(dir, tc.name+"."+ext)
				if err := Render(tc.f, p); err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if ext == "png" {
					checkPNG(t, b, tc.f, 8)
				} else {
					checkSVG(t, b, tc.texts...)
				}
			}
			b, err := Bytes(tc.f, "png")
			if err != nil {
				t.Fatal(err)
			}
			checkPNG(t, b, tc.f, 8)
		})
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 14 {
		t.Errorf("output directory has %d files, want 14 (no temporaries)", len(entries))
	}
}

func TestBadInput(t *testing.T) {
	s := func(x, y []float64) []Series { return []Series{{Name: "s1", X: x, Y: y}} }
	okX, okY := []float64{1, 2}, []float64{3, 4}
	for _, tc := range []struct {
		name string
		fn   func() (*Figure, error)
		want string
	}{
		{"no series", func() (*Figure, error) { return LinePlot(nil, Axes{}) }, "no series"},
		{"empty series", func() (*Figure, error) { return LinePlot(s(nil, nil), Axes{}) }, `series "s1": empty`},
		{"lengths", func() (*Figure, error) { return LinePlot(s(okX, []float64{1}), Axes{}) }, "2 X values and 1 Y values"},
		{"log x zero", func() (*Figure, error) { return LinePlot(s([]float64{1, 0}, okY), Axes{LogX: true}) }, "X[1] = 0"},
		{"log y negative", func() (*Figure, error) { return LinePlot(s(okX, []float64{1, -2}), Axes{LogY: true}) }, "Y[1] = -2"},
		{"nan", func() (*Figure, error) { return LinePlot(s(okX, []float64{math.NaN(), 1}), Axes{}) }, "not finite"},
		{"bar labels", func() (*Figure, error) { return BarChart([]string{"a"}, okY, Axes{}) }, "1 labels for 2 values"},
		{"bar empty", func() (*Figure, error) { return BarChart(nil, nil, Axes{}) }, "no values"},
		{"bar log", func() (*Figure, error) { return BarChart([]string{"a", "b"}, okY, Axes{LogY: true}) }, "linear axes"},
		{"group length", func() (*Figure, error) {
			return GroupedBars([]string{"a", "b"}, []Group{{"g", []float64{1}}}, Axes{})
		}, `group "g": 1 values for 2 categories`},
		{"grid empty panel", func() (*Figure, error) { return BarGrid([]Panel{{Title: "p0"}}, GridOptions{}) }, `panel "p0": no values`},
		{"heat ragged", func() (*Figure, error) {
			return HeatMap([][]float64{{1, 2}, {3}}, []string{"a", "b"}, []string{"x", "y"}, HeatOptions{})
		}, "row 1 has 1 values"},
		{"heat labels", func() (*Figure, error) {
			return HeatMap([][]float64{{1, 2}}, []string{"a", "b"}, []string{"x", "y"}, HeatOptions{})
		}, "2 row labels"},
		{"curves y", func() (*Figure, error) {
			return TrainingCurves([]Run{{Name: "r", Records: []results.TrainRecord{{Step: 1}}}}, "flops", "accuracy", Axes{})
		}, `y "accuracy"`},
		{"curves domain", func() (*Figure, error) {
			return TrainingCurves([]Run{{Name: "r", Records: []results.TrainRecord{{Step: 1, Loss: 1}}}}, "step", "held_out:x", Axes{})
		}, `run "r" has no record`},
	} {
		f, err := tc.fn()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got (%v, %v), want an error containing %q", tc.name, f, err, tc.want)
		}
	}
	f, _ := BarChart([]string{"a"}, []float64{1}, Axes{})
	if err := Render(f, filepath.Join(t.TempDir(), "x.pdf")); err == nil || !strings.Contains(err.Error(), ".pdf") {
		t.Errorf("rendering to .pdf: got %v", err)
	}
	if _, err := Bytes(f, "gif"); err == nil {
		t.Errorf("Bytes(gif) succeeded")
	}
}

func TestLegendCorner(t *testing.T) {
	rising := []Series{{Name: "a", X: []float64{1, 2, 3, 4}, Y: []float64{1, 2, 3, 4}}}
	// A rising line crosses the bottom-left and top-right corners: the legend goes top left.
	if top, left, free := legendCorner(rising, Axes{}, 1); !top || !left || !free {
		t.Errorf("rising line: legend top=%v left=%v, want top left", top, left)
	}
	falling := []Series{{Name: "a", X: []float64{1, 10, 100, 1000}, Y: []float64{4, 3, 2, 1}}}
	// Falling on a log x axis: the top right is free.
	if top, left, free := legendCorner(falling, Axes{LogX: true}, 1); !top || left || !free {
		t.Errorf("falling line: legend top=%v left=%v, want top right", top, left)
	}
	// A line across the top and one point at the bottom middle: both top corners are covered,
	// bottom right comes first in the order top right, top left, bottom right, bottom left.
	arch := []Series{{Name: "a", X: []float64{0, 2}, Y: []float64{10, 10}}, {Name: "b", X: []float64{1}, Y: []float64{0}}}
	if top, left, free := legendCorner(arch, Axes{}, 2); top || left || !free {
		t.Errorf("arch: legend top=%v left=%v, want bottom right", top, left)
	}
	// Lines through every corner: none is free, top right with head room.
	cross := []Series{{Name: "a", X: []float64{0, 1}, Y: []float64{0, 1}}, {Name: "b", X: []float64{0, 1}, Y: []float64{1, 0}}}
	if top, left, free := legendCorner(cross, Axes{}, 2); !top || left || free {
		t.Errorf("cross: legend top=%v left=%v free=%v, want top right, not free", top, left, free)
	}
	p := plot.New()
	addHeadroom(p, cross, Axes{}, 0.25)
	if p.Y.Min != 0 || math.Abs(p.Y.Max-4.0/3) > 1e-12 {
		t.Errorf("head room: y range [%v, %v], want [0, 4/3]", p.Y.Min, p.Y.Max)
	}
}
