package latency

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"blackmamba/experiments/results"
	"blackmamba/plots"
)

// Load reads a Result from a JSON file written by Save and checks that it can be plotted.
func Load(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("latency: %s: %w", path, err)
	}
	if len(r.Archs) == 0 {
		return nil, fmt.Errorf("latency: %s: field archs is empty", path)
	}
	for i, a := range r.Archs {
		if len(a.Points) == 0 {
			return nil, fmt.Errorf("latency: %s: archs[%d] (%q) has no points", path, i, a.Config)
		}
		for j, p := range a.Points {
			if p.L < 1 || p.TotalMS.Median <= 0 || p.PerTokenMS.Median <= 0 {
				return nil, fmt.Errorf("latency: %s: archs[%d].points[%d]: L=%d total_ms=%g per_token_ms=%g, want all > 0",
					path, i, j, p.L, p.TotalMS.Median, p.PerTokenMS.Median)
			}
		}
	}
	return &r, nil
}

// Save writes r as indented JSON to path, creating its directory.
func Save(r *Result, path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// label names an architecture in figures and tables.
func label(a Arch) string {
	return fmt.Sprintf("%s (%.2gB/%.2gB)", a.Config, float64(a.ActiveParams)/1e9, float64(a.TotalParams)/1e9)
}

// PlotAll renders from r, into dir, total_time.{png,svg} (time to generate L tokens against L,
// log-log) and per_token.{png,svg} (per-token latency at length L, log L axis). It returns the
// paths written.
func PlotAll(r *Result, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var total, per []plots.Series
	for _, a := range r.Archs {
		st := plots.Series{Name: label(a)}
		sp := plots.Series{Name: label(a)}
		for _, p := range a.Points {
			st.X, st.Y = append(st.X, float64(p.L)), append(st.Y, p.TotalMS.Median/1e3)
			sp.X, sp.Y = append(sp.X, float64(p.L)), append(sp.Y, p.PerTokenMS.Median)
		}
		total, per = append(total, st), append(per, sp)
	}
	where := fmt.Sprintf("%s family, batch 1, %s", r.Family, r.Backend)
	figs := []struct {
		name   string
		series []plots.Series
		ax     plots.Axes
	}{
		{"total_time", total, plots.Axes{Title: "Generation time (" + where + ")", XLabel: "tokens generated L",
			YLabel: "total time (s)", LogX: true, LogY: true}},
		{"per_token", per, plots.Axes{Title: "Per-token latency (" + where + ")", XLabel: "sequence length L",
			YLabel: "ms per token", LogX: true}},
	}
	var paths []string
	for _, f := range figs {
		fig, err := plots.LinePlot(f.series, f.ax)
		if err != nil {
			return paths, err
		}
		for _, ext := range plots.Formats() {
			p := filepath.Join(dir, f.name+"."+ext)
			if err := plots.Render(fig, p); err != nil {
				return paths, err
			}
			paths = append(paths, p)
		}
	}
	return paths, nil
}

// WriteMarkdown writes two Markdown tables of r: total generation time (ms, median over
// repetitions) and per-token latency (ms) at each length L (rows) for each architecture
// (columns), then the warm-up, first-token and memory figures.
func WriteMarkdown(w io.Writer, r *Result) error {
	var lengths []int
	seen := map[int]bool{}
	for _, a := range r.Archs {
		for _, p := range a.Points {
			if !seen[p.L] {
				seen[p.L] = true
				lengths = append(lengths, p.L)
			}
		}
	}
	head := "| L |"
	rule := "|---:|"
	for _, a := range r.Archs {
		head += " " + label(a) + " |"
		rule += "---:|"
	}
	var b strings.Builder
	for _, tab := range []struct {
		title string
		val   func(Point) string
	}{
		{"Time to generate L tokens, ms (median of reps)", func(p Point) string { return fmt.Sprintf("%.1f", p.TotalMS.Median) }},
		{"Per-token latency at length L, ms", func(p Point) string { return fmt.Sprintf("%.3f", p.PerTokenMS.Median) }},
	} {
		fmt.Fprintf(&b, "%s (%s family, %s, batch 1, %s reps):\n\n%s\n%s\n", tab.title, r.Family, r.Backend, repsText(r), head, rule)
		for _, L := range lengths {
			fmt.Fprintf(&b, "| %d |", L)
			for _, a := range r.Archs {
				cell := "–"
				for _, p := range a.Points {
					if p.L == L {
						cell = tab.val(p)
					}
				}
				fmt.Fprintf(&b, " %s |", cell)
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "| | steps per call | step product rows | step weights | steps | timed passes | warm-up s | first token ms | peak device memory |\n|---|---:|---:|---|---|---:|---:|---:|---:|\n")
	for _, a := range r.Archs {
		mem := "–"
		if a.PeakMemoryBytes > 0 {
			mem = fmt.Sprintf("%.1f GiB", float64(a.PeakMemoryBytes)/(1<<30))
		}
		layout := "[in, out]"
		if a.StepFolded {
			layout = "folded"
		} else if a.StepTransposed {
			layout = "transposed"
		}
		if a.StepFuse != "" {
			layout += ", fuse " + a.StepFuse
		}
		planned := a.planned(r)
		passes := fmt.Sprint(planned)
		if a.RepsDone > 0 && a.RepsDone < planned {
			passes = fmt.Sprintf("%d of %d (stopped)", a.RepsDone, planned)
		}
		loop := "held"
		if a.Resident {
			loop = "resident"
			if a.PipelinedCalls > 0 {
				loop = "resident, launched ahead"
			}
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s | %.1f | %.2f | %s |\n", a.Config, max(a.Unroll, 1), max(a.StepRows, 1), layout, loop, passes, a.CompileS, a.FirstTokenMS.Median, mem)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Merge combines results of the same measurement run in parts (architectures timed in separate
// jobs or on separate GPUs): family, batch, prompt length and lengths must agree, and an
// architecture timed twice keeps its later result. Parts timed with different numbers of
// passes merge too: each architecture then keeps its own in Arch.Reps, and Result.Reps is the
// most of them. The backend and creation time are the first part's; Method notes the merge.
func Merge(parts ...*Result) (*Result, error) {
	reps := 0
	for _, p := range parts {
		reps = max(reps, p.Reps)
	}
	archs, err := results.MergeParts("latency", parts,
		func(r *Result) string {
			return fmt.Sprintf("family %s, batch %d, prompt %d tokens, max_len %d", r.Family, r.Batch, r.Prompt, r.MaxLen)
		},
		func(r *Result) []Arch {
			out := make([]Arch, len(r.Archs))
			for i, a := range r.Archs {
				if a.Reps == 0 && r.Reps != reps {
					a.Reps = r.Reps
				}
				out[i] = a
			}
			return out
		},
		func(a Arch) string { return a.Config })
	if err != nil {
		return nil, err
	}
	out := *parts[0]
	out.Reps = reps
	out.Archs = archs
	if len(parts) > 1 {
		out.Method = strings.TrimSpace(out.Method + fmt.Sprintf(" (merged from %d results)", len(parts)))
	}
	return &out, nil
}

// planned is the number of timed passes asked of a: its own after a Merge of results with
// different passes, else r's.
func (a Arch) planned(r *Result) int {
	if a.Reps > 0 {
		return a.Reps
	}
	return r.Reps
}

// repsText is r's timed passes per architecture, "2-3" when its architectures had different ones.
func repsText(r *Result) string {
	lo, hi := r.Reps, 0
	for _, a := range r.Archs {
		lo, hi = min(lo, a.planned(r)), max(hi, a.planned(r))
	}
	if len(r.Archs) == 0 || lo == hi {
		return fmt.Sprint(r.Reps)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}
