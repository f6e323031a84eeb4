package latency

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/bm"
	"blackmamba/xla"
)

func cpuBackend(t *testing.T) backends.Backend {
	t.Helper()
	b, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatalf("cannot create the pure-Go backend: %v", err)
	}
	return b
}

func TestLengthsAndWindow(t *testing.T) {
	for _, tc := range []struct {
		min, max int
		want     []int
	}{
		{128, 16384, []int{128, 256, 512, 1024, 2048, 4096, 8192, 16384}},
		{8, 64, []int{8, 16, 32, 64}},
		{128, 1000, []int{128, 256, 512, 1000}},
		{128, 64, []int{64}},
	} {
		if got := Lengths(tc.min, tc.max); !slices.Equal(got, tc.want) {
			t.Errorf("Lengths(%d, %d) = %v, want %v", tc.min, tc.max, got, tc.want)
		}
	}
	for _, tc := range []struct{ L, w int }{{2, 1}, {8, 2}, {128, 32}, {512, 128}, {16384, 128}} {
		if got := Window(tc.L); got != tc.w {
			t.Errorf("Window(%d) = %d, want %d", tc.L, got, tc.w)
		}
	}
}

func TestStat(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want Stat
	}{
		{[]float64{3}, Stat{3, 3, 3}},
		{[]float64{5, 1, 3}, Stat{3, 1, 5}},
		{[]float64{4, 1, 2, 10}, Stat{3, 1, 10}},
	} {
		if got := stat(tc.xs); got != tc.want {
			t.Errorf("stat(%v) = %+v, want %+v", tc.xs, got, tc.want)
		}
	}
}

// TestRunTinyAndReport runs a short sweep of two tiny architectures on the CPU backend and
// checks the structure of the result (lengths, monotone totals, spreads around medians,
// repeatable tokens), the JSON round trip, the figures and the Markdown table.
func TestRunTinyAndReport(t *testing.T) {
	backend := cpuBackend(t)
	// What AfterArch saw each time: the architectures and each one's passes.
	var seen []string
	after := func(r *Result) error {
		var s []string
		for _, a := range r.Archs {
			s = append(s, fmt.Sprintf("%s:%d:%d", a.Config, a.RepsDone, len(a.Points)))
		}
		seen = append(seen, strings.Join(s, ","))
		return nil
	}
	res, err := Run(backend, Options{Family: "tiny", Archs: []string{"tiny", "tiny-transformer"}, MaxLen: 8, MinLen: 4, Reps: 2, StepRows: 2, StepWeights: bm.StepFolded, AfterArch: after})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Archs) != 2 {
		t.Fatalf("got %d architectures, want 2", len(res.Archs))
	}
	// After the first pass of each architecture (one pass), then after each architecture (two).
	wantSeen := []string{"tiny:1:2", "tiny:2:2", "tiny:2:2,tiny-transformer:1:2", "tiny:2:2,tiny-transformer:2:2"}
	if !slices.Equal(seen, wantSeen) {
		t.Errorf("AfterArch saw %q, want %q", seen, wantSeen)
	}
	for _, a := range res.Archs {
		if a.ActiveParams <= 0 || a.TotalParams < a.ActiveParams || a.ComputeDType != "bfloat16" || a.StepRows != 2 || !a.StepTransposed || !a.StepFolded {
			t.Errorf("%s: params %d/%d, dtype %q, step rows %d (want 2), transposed %v, folded %v (want both)", a.Config, a.ActiveParams, a.TotalParams, a.ComputeDType, a.StepRows, a.StepTransposed, a.StepFolded)
		}
		if !a.TokensRepeat {
			t.Errorf("%s: repetitions produced different tokens", a.Config)
		}
		if a.TimedCompiles != 0 {
			t.Errorf("%s: %d graphs compiled during the timed passes", a.Config, a.TimedCompiles)
		}
		if !(a.WeightsS > 0 && a.WeightsS < a.CompileS) {
			t.Errorf("%s: weights %.3fs not a positive part of the warm-up %.3fs", a.Config, a.WeightsS, a.CompileS)
		}
		var ls []int
		prev := 0.0
		for _, p := range a.Points {
			ls = append(ls, p.L)
			for _, s := range []Stat{p.TotalMS, p.PerTokenMS} {
				if !(s.Min <= s.Median && s.Median <= s.Max && s.Min > 0) {
					t.Errorf("%s L=%d: bad stat %+v", a.Config, p.L, s)
				}
			}
			if p.TotalMS.Median <= prev || p.TotalMS.Median < a.FirstTokenMS.Min {
				t.Errorf("%s L=%d: total %g ms not above the previous length's %g or the first token's", a.Config, p.L, p.TotalMS.Median, prev)
			}
			prev = p.TotalMS.Median
		}
		if !slices.Equal(ls, []int{4, 8}) {
			t.Errorf("%s: lengths %v, want [4 8]", a.Config, ls)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "r", "latency.json")
	if err := Save(res, path); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Archs[1].Points[1] != res.Archs[1].Points[1] {
		t.Errorf("JSON round trip: %+v, want %+v", back.Archs[1].Points[1], res.Archs[1].Points[1])
	}
	paths, err := PlotAll(back, filepath.Join(dir, "plots"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || st.Size() < 1000 {
			t.Errorf("figure %s missing or too small: %v", p, err)
		}
	}
	var md strings.Builder
	if err := WriteMarkdown(&md, back); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 4 |", "| 8 |", "tiny-transformer", "warm-up s", "step product rows", "| folded |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("Markdown table lacks %q:\n%s", want, md.String())
		}
	}
	// Resident steps, and launched ahead when a pipeline ran calls.
	back.Archs[0].Resident, back.Archs[0].PipelinedCalls = true, 12
	back.Archs[1].Resident = true
	md.Reset()
	if err := WriteMarkdown(&md, back); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(md.String(), "| resident, launched ahead |"); n != 1 || strings.Count(md.String(), "| resident |") != 1 {
		t.Errorf("Markdown table: want one resident row launched ahead and one not:\n%s", md.String())
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, body, want string }{
		{"bad.json", "{", "bad.json"},
		{"empty.json", `{"archs": []}`, "archs is empty"},
		{"zero.json", `{"archs": [{"config": "x", "points": [{"L": 4, "total_ms": {"median": 0}, "per_token_ms": {"median": 1}}]}]}`, "archs[0].points[0]"},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%s): error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := Run(cpuBackend(t), Options{Family: "7b"}); err == nil || !strings.Contains(err.Error(), "7b") {
		t.Errorf("unknown family: error %v", err)
	}
	// An architecture of another family would be labelled and merged as the family's.
	for _, archs := range [][]string{{"2.8b"}, {"tiny", "1.5b-mamba"}, {"tinyx"}} {
		bad := archs[len(archs)-1]
		if _, err := Run(cpuBackend(t), Options{Family: "tiny", Archs: archs}); err == nil || !strings.Contains(err.Error(), `"`+bad+`"`) || !strings.Contains(err.Error(), `family "tiny"`) {
			t.Errorf("archs %v in family tiny: error %v, want one naming %q and the family", archs, err, bad)
		}
	}
	if _, err := Run(cpuBackend(t), Options{Family: "tiny", StepRows: -1}); err == nil || !strings.Contains(err.Error(), "step rows (-1)") {
		t.Errorf("step rows -1: error %v, want one naming the step rows", err)
	}
	if _, err := Run(cpuBackend(t), Options{Family: "tiny", StepFuse: "gate"}); err == nil || !strings.Contains(err.Error(), "folded") {
		t.Errorf("step fuse without the folded weights: error %v, want one naming the folded layout", err)
	}
	if _, err := Run(cpuBackend(t), Options{Family: "tiny", StepFuse: "gat", StepWeights: bm.StepFolded}); err == nil || !strings.Contains(err.Error(), `"gat"`) {
		t.Errorf("unknown step fuse: error %v, want one naming it", err)
	}
}

// TestMerge checks that parts of one measurement combine in order, that an architecture timed
// twice keeps its later result, and that parts with other settings are refused with both
// settings named.
func TestMerge(t *testing.T) {
	arch := func(name string, ms float64) Arch {
		return Arch{Config: name, Points: []Point{{L: 8, TotalMS: Stat{Median: ms}, PerTokenMS: Stat{Median: ms / 8}, Window: 4}}}
	}
	base := Result{Family: "tiny", Batch: 1, Prompt: 1, MaxLen: 8, Reps: 1, Method: "m"}
	a, b := base, base
	a.Archs = []Arch{arch("tiny", 10), arch("tiny-mamba", 9)}
	b.Archs = []Arch{arch("tiny-transformer", 12), arch("tiny", 11)}
	m, err := Merge(&a, &b)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range m.Archs {
		got = append(got, fmt.Sprintf("%s=%g", x.Config, x.Points[0].TotalMS.Median))
	}
	if s := strings.Join(got, " "); s != "tiny=11 tiny-mamba=9 tiny-transformer=12" {
		t.Errorf("merged %s, want tiny=11 tiny-mamba=9 tiny-transformer=12", s)
	}
	c := base
	c.MaxLen = 16
	c.Archs = b.Archs
	if _, err := Merge(&a, &c); err == nil || !strings.Contains(err.Error(), "max_len 16") {
		t.Errorf("merging results of different lengths: err %v, want one naming both settings", err)
	}

	// Parts timed with 3 and 2 passes: each architecture keeps its own count, the result says
	// the most, and the report shows both without calling the 2-pass ones stopped.
	d, e := base, base
	d.Reps, e.Reps = 3, 2
	d.Archs = []Arch{arch("tiny", 10), arch("tiny-mamba", 9)}
	d.Archs[1].RepsDone = 1 // stopped after one of its three passes
	e.Archs = []Arch{arch("tiny-transformer", 12)}
	e.Archs[0].RepsDone = 2
	m, err = Merge(&d, &e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Reps != 3 {
		t.Errorf("merged reps %d, want 3", m.Reps)
	}
	want := map[string]int{"tiny": 3, "tiny-mamba": 3, "tiny-transformer": 2}
	for _, x := range m.Archs {
		if got := x.planned(m); got != want[x.Config] {
			t.Errorf("%s: planned passes %d, want %d", x.Config, got, want[x.Config])
		}
	}
	var rep strings.Builder
	if err := WriteMarkdown(&rep, m); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"batch 1, 2-3 reps", "| tiny-mamba |", "1 of 3 (stopped)", "| tiny-transformer |"} {
		if !strings.Contains(rep.String(), line) {
			t.Errorf("report of the merge lacks %q:\n%s", line, rep.String())
		}
	}
	if strings.Contains(rep.String(), "2 of 2") || strings.Contains(rep.String(), "2 of 3") {
		t.Errorf("report of the merge calls the 2-pass architecture stopped:\n%s", rep.String())
	}
}

// TestTimePassUnrolled checks that an unrolled pass (4 steps per call, single steps up to
// checkpoints that are not multiples of 4) produces the same tokens at every checkpoint as the
// pass of one call per token, and a time at each, for a Mamba and an attention model; and the
// same for the resident loop (bm.GreedyDecoder.GenerateResident), which also builds no graph
// after its warm-up.
func TestTimePassUnrolled(t *testing.T) {
	backend := cpuBackend(t)
	const n = 40
	marks := map[int]bool{1: true}
	for _, L := range Lengths(5, n) { // 5, 10, 20, 40 and their windows' starts
		marks[L], marks[L-Window(L)] = true, true
	}
	for _, name := range []string{"tiny", "tiny-transformer"} {
		t.Run(name, func(t *testing.T) {
			var ref map[int]int32
			for _, unroll := range []int{1, 4} {
				for _, resident := range []bool{false, true} {
					cfg := bm.MustPreset(name)
					ctx := context.New()
					ctx.SetParam(initializers.ParamInitialSeed, int64(5))
					dec, err := bm.NewDecoder(backend, ctx, cfg, 1, n)
					if err != nil {
						t.Fatal(err)
					}
					g := bm.NewGreedyDecoder(dec)
					g.Unroll = unroll
					warm, pass := g.WarmUpGreedy, timePass
					if resident {
						warm, pass = g.WarmUpResident, timePassResident
					}
					if err := warm(1, n); err != nil {
						t.Fatal(err)
					}
					built := g.GraphsBuilt()
					times, toks, err := pass(g, n, marks)
					if b := g.GraphsBuilt() - built; b != 0 {
						t.Errorf("unroll %d, resident %v: the pass built %d graphs after the warm-up", unroll, resident, b)
					}
					g.Release()
					if err != nil {
						t.Fatal(err)
					}
					for m := range marks {
						if !(times[m] > 0) {
							t.Errorf("unroll %d, resident %v: no time at checkpoint %d", unroll, resident, m)
						}
					}
					for _, m := range checkpoints(marks, 1, n) {
						if times[m] < times[1] {
							t.Errorf("unroll %d, resident %v: checkpoint %d at %.3f ms, before the first token's %.3f", unroll, resident, m, times[m], times[1])
						}
					}
					stops := checkpoints(marks, 1, n)
					if !slices.IsSortedFunc(stops, func(a, b int) int { return cmp.Compare(times[a], times[b]) }) {
						t.Errorf("unroll %d, resident %v: checkpoint times out of order", unroll, resident)
					}
					if ref == nil {
						ref = toks
					} else if !maps.Equal(toks, ref) {
						t.Errorf("unroll %d, resident %v: tokens at the checkpoints %v, one call per token %v", unroll, resident, toks, ref)
					}
				}
			}
		})
	}
}

// TestRunUnrolledCompilesNothingTimed checks that a sweep at 4 steps per call compiles every
// graph in its warm-up, also for an attention model whose KV caches grow through several
// buckets (8, 16, 32): no graph is built during the timed passes.
func TestRunUnrolledCompilesNothingTimed(t *testing.T) {
	backend := cpuBackend(t)
	res, err := Run(backend, Options{Family: "tiny", Archs: []string{"tiny", "tiny-transformer"}, MaxLen: 32, MinLen: 8, Reps: 1, Unroll: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range res.Archs {
		if a.Unroll != 4 {
			t.Errorf("%s: unroll %d recorded, want 4", a.Config, a.Unroll)
		}
		if a.TimedCompiles != 0 {
			t.Errorf("%s: %d graphs compiled during the timed passes", a.Config, a.TimedCompiles)
		}
	}
}

// TestChooseSteps: Options.ChooseSteps picks each architecture's layout and fusion from its step
// copies' bytes (after the cast), overriding StepWeights and StepFuse, and the result records
// what ran; its error stops the sweep.
func TestChooseSteps(t *testing.T) {
	backend := cpuBackend(t)
	var sizes []int64
	opts := Options{Family: "tiny", Archs: []string{"tiny", "tiny-mamba"}, MaxLen: 8, MinLen: 4, Reps: 1, Resident: true,
		StepWeights: bm.StepTransposed, StepFuse: "gate",
		ChooseSteps: func(_ backends.Backend, copyBytes int64) (bm.StepLayout, string, error) {
			sizes = append(sizes, copyBytes)
			return bm.StepFolded, "residual", nil
		}}
	res, err := Run(backend, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range res.Archs {
		if !a.StepFolded || !a.StepTransposed || a.StepFuse != "residual" || !a.TokensRepeat {
			t.Errorf("%s: folded %v, transposed %v, fuse %q, tokens repeat %v; want the chosen folded/residual", a.Config, a.StepFolded, a.StepTransposed, a.StepFuse, a.TokensRepeat)
		}
		if i >= len(sizes) || sizes[i] <= 0 {
			t.Errorf("%s: ChooseSteps saw copy bytes %v", a.Config, sizes)
		}
	}
	opts.ChooseSteps = func(backends.Backend, int64) (bm.StepLayout, string, error) {
		return "", "", fmt.Errorf("no layout fits")
	}
	if _, err := Run(backend, opts); err == nil || !strings.Contains(err.Error(), "no layout fits") {
		t.Errorf("a failing ChooseSteps: error %v", err)
	}
}
