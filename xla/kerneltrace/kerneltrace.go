// Package kerneltrace records the GPU kernels this process runs, each with its device start
// and end times, grid and block, through NVIDIA's CUPTI activity interface. CUPTI is loaded at
// run time (dlopen): it ships with CUDA toolkits and with the CUDA wheels that JAX and PyTorch
// install, next to the PJRT plugin this project runs on, so nothing is needed at build time.
//
// It answers what XLA's dumps cannot: how long each kernel of a compiled graph takes on the
// device, and how much of a timed region the GPU spends idle between kernels. Start a trace
// (Start), take timestamps on CUPTI's clock around the region (Tracer.Now), then read the
// kernels (Tracer.Collect) and summarise those inside the region (Summarize).
//
// CUPTI's kernel records are read at fixed byte offsets of the prefix that every kernel record
// version since CUDA 9 shares (start, end, grid, block, correlation id, name); Check tells
// when the records read do not look like kernels.
package kerneltrace

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// EnvLibrary names the CUPTI library to load, overriding the search of Find.
const EnvLibrary = "BLACKMAMBA_CUPTI"

// Kernel is one kernel execution. Times are nanoseconds on CUPTI's clock (Tracer.Now).
type Kernel struct {
	Name           string
	StartNs, EndNs uint64
	Grid, Block    [3]int32
	Correlation    uint32 // CUPTI's id of the launch
}

// DurationNs is the kernel's time on the device.
func (k Kernel) DurationNs() uint64 {
	if k.EndNs < k.StartNs {
		return 0
	}
	return k.EndNs - k.StartNs
}

// Tracer is a running trace. There is at most one per process.
type Tracer struct {
	Library string // the CUPTI library loaded
	Version uint32 // CUPTI's API version
	lost    uint64
}

// ErrUnsupported is returned by Start where this build cannot load CUPTI (not Linux, or built
// without cgo).
var ErrUnsupported = errors.New("kerneltrace: kernel tracing needs Linux and a build with cgo")

// Start loads CUPTI from lib (Find's result when lib is "") and starts recording every kernel
// the process launches from now on. Kernels that ran before Start are not recorded.
func Start(lib string) (*Tracer, error) {
	if lib == "" {
		var err error
		if lib, err = Find(""); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(lib); err != nil && strings.ContainsRune(lib, '/') {
		return nil, fmt.Errorf("kerneltrace: CUPTI library %s: %w", lib, err)
	}
	return start(lib)
}

// Now is CUPTI's current timestamp, on the clock of the kernels' StartNs and EndNs.
func (t *Tracer) Now() (uint64, error) { return t.now() }

// Collect flushes CUPTI's buffers and returns the kernels recorded since the last Collect (the
// kernels of every launch that has completed; wait for the device before calling it), in the
// order CUPTI delivered them.
func (t *Tracer) Collect() ([]Kernel, error) {
	ks, lost, err := t.collect()
	if err != nil {
		return nil, err
	}
	if lost > t.lost {
		n := lost - t.lost
		t.lost = lost
		return ks, fmt.Errorf("kerneltrace: %d kernel records were dropped for want of host memory", n)
	}
	return ks, nil
}

// Stop ends the recording. Kernels recorded before Stop can still be collected.
func (t *Tracer) Stop() error { return t.stop() }

// Find returns the CUPTI library to load: $BLACKMAMBA_CUPTI if set, else the first
// libcupti.so found next to the PJRT plugin at pluginPath (the nvidia/*/lib folders of its
// Python site-packages), then under the CUDA toolkits in /usr/local, then in the folders of
// $LD_LIBRARY_PATH. It fails with the places it looked.
func Find(pluginPath string) (string, error) {
	if p := os.Getenv(EnvLibrary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("kerneltrace: $%s=%s: %w", EnvLibrary, p, err)
		}
		return p, nil
	}
	var patterns []string
	if pluginPath != "" {
		// JAX's plugin sits in site-packages/jax_plugins/<name>/; the CUDA wheels in site-packages/nvidia/.
		site := filepath.Dir(filepath.Dir(filepath.Dir(pluginPath)))
		patterns = append(patterns, filepath.Join(site, "nvidia", "*", "lib", "libcupti.so*"),
			filepath.Join(site, "nvidia", "*", "*", "lib", "libcupti.so*"))
	}
	for _, venv := range []string{os.Getenv("VIRTUAL_ENV"), "/opt/torch/.venv"} {
		if venv != "" {
			patterns = append(patterns, filepath.Join(venv, "lib", "python3*", "site-packages", "nvidia", "*", "lib", "libcupti.so*"))
		}
	}
	patterns = append(patterns, "/usr/local/cuda*/extras/CUPTI/lib64/libcupti.so*", "/usr/local/cuda*/lib64/libcupti.so*")
	for _, d := range filepath.SplitList(os.Getenv("LD_LIBRARY_PATH")) {
		if d != "" {
			patterns = append(patterns, filepath.Join(d, "libcupti.so*"))
		}
	}
	for _, pat := range patterns {
		ms, _ := filepath.Glob(pat)
		// Newest first: libcupti.so.13 before libcupti.so.12.
		slices.SortFunc(ms, func(a, b string) int { return cmp.Compare(b, a) })
		for _, m := range ms {
			if fi, err := os.Stat(m); err == nil && !fi.IsDir() {
				return m, nil
			}
		}
	}
	return "", fmt.Errorf("kerneltrace: no libcupti.so found (set $%s); looked in %s", EnvLibrary, strings.Join(patterns, ", "))
}

// Check reports an error when ks do not look like kernel records: a kernel without a name,
// with a zero grid or block dimension, or ending before it starts. It guards against a CUPTI
// whose records no longer share the layout this package reads.
func Check(ks []Kernel) error {
	for i, k := range ks {
		bad := ""
		switch {
		case k.Name == "":
			bad = "no name"
		case k.EndNs < k.StartNs || k.StartNs == 0:
			bad = fmt.Sprintf("times %d to %d", k.StartNs, k.EndNs)
		case min(k.Grid[0], k.Grid[1], k.Grid[2], k.Block[0], k.Block[1], k.Block[2]) < 1:
			bad = fmt.Sprintf("grid %v, block %v", k.Grid, k.Block)
		}
		if bad != "" {
			return fmt.Errorf("kerneltrace: record %d of %d is not a plausible kernel (%s): CUPTI's record layout may differ from the one this package reads", i+1, len(ks), bad)
		}
	}
	return nil
}

// Stat is what one kernel (by name, grid and block) took inside a region.
type Stat struct {
	Name        string   `json:"name"`
	Grid        [3]int32 `json:"grid"`
	Block       [3]int32 `json:"block"`
	Count       int      `json:"count"`
	TotalUs     float64  `json:"total_us"`
	MeanUs      float64  `json:"mean_us"`
	MedianUs    float64  `json:"median_us"`
	MinUs       float64  `json:"min_us"`
	MaxUs       float64  `json:"max_us"`
	ShareOfBusy float64  `json:"share_of_busy"` // TotalUs over the region's busy time
	// FirstOrder is the rank of the kernel's first execution in the region: sorting by it
	// gives the order of a graph's kernels.
	FirstOrder int `json:"first_order"`
}

// Summary describes the kernels that started inside one region [FromNs, ToNs).
type Summary struct {
	Label   string  `json:"label"`
	SpanUs  float64 `json:"span_us"` // ToNs − FromNs
	Kernels int     `json:"kernels"` // executions inside the region
	BusyUs  float64 `json:"busy_us"` // time with at least one kernel running (overlaps counted once)
	SumUs   float64 `json:"sum_us"`  // the kernels' durations added up
	IdleUs  float64 `json:"idle_us"` // SpanUs − BusyUs: the device waiting for work
	// LeadUs is the idle time from the region's start to its first kernel, TailUs from the end
	// of its last kernel to the region's end (the whole span when it has none): in a region of
	// one call, the host's work before the device starts and after it is done.
	LeadUs float64 `json:"lead_us"`
	TailUs float64 `json:"tail_us"`
	// GapMedianUs is the median time from one kernel's end to the next one's start (0 when they
	// overlap), over consecutive kernels of the region.
	GapMedianUs float64 `json:"gap_median_us"`
	// Gaps counts and adds up those times by size (GapBuckets), and LargestGaps are the largest
	// with the kernels around them: where the idle time is.
	Gaps        []GapBucket `json:"gaps"`
	LargestGaps []Gap       `json:"largest_gaps"`
	Stats       []Stat      `json:"stats"` // by total time, largest first
	// Timeline is the region's first TimelineKernels kernels in start order, times relative to
	// the region's start: the order and spacing of one graph's kernels.
	Timeline []Event `json:"timeline,omitempty"`
}

// GapBucket is the gaps between consecutive kernels of up to MaxUs (and more than the previous
// bucket's MaxUs); the last bucket has MaxUs −1 (no bound).
type GapBucket struct {
	MaxUs   float64 `json:"max_us"`
	Count   int     `json:"count"`
	TotalUs float64 `json:"total_us"`
}

// GapBuckets are the upper bounds of Summary.Gaps' buckets in µs (0 holds back-to-back and
// overlapping kernels).
var GapBuckets = []float64{0, 1, 2, 5, 10, 20, 50, 100, 500, 2000}

// Gap is one idle time between two consecutive kernels.
type Gap struct {
	Us      float64 `json:"us"`
	AtUs    float64 `json:"at_us"` // from the region's start to the gap's start
	Before  string  `json:"before"`
	After   string  `json:"after"`
	AfterNo int     `json:"after_no"` // the following kernel's rank in the region
}

// Event is one kernel of a timeline.
type Event struct {
	Name    string  `json:"name"`
	StartUs float64 `json:"start_us"`
	Us      float64 `json:"us"`
}

// TimelineKernels is how many kernels Summary.Timeline keeps; LargestGaps how many gaps.
var (
	TimelineKernels = 600
	LargestGaps     = 20
)

// Summarize summarises the kernels of ks that start in [from, to).
func Summarize(label string, ks []Kernel, from, to uint64) Summary {
	s := Summary{Label: label}
	if to > from {
		s.SpanUs = float64(to-from) / 1e3
	}
	var in []Kernel
	for _, k := range ks {
		if k.StartNs >= from && k.StartNs < to {
			in = append(in, k)
		}
	}
	sort.SliceStable(in, func(i, j int) bool { return in[i].StartNs < in[j].StartNs })
	s.Kernels = len(in)
	type key struct {
		name        string
		grid, block [3]int32
	}
	durs := map[key][]float64{}
	first := map[key]int{}
	var busy, end uint64
	var gaps []float64
	for i, k := range in {
		d := k.DurationNs()
		s.SumUs += float64(d) / 1e3
		kk := key{k.Name, k.Grid, k.Block}
		if _, ok := first[kk]; !ok {
			first[kk] = i
		}
		durs[kk] = append(durs[kk], float64(d)/1e3)
		// Busy time: the union of [start, end) intervals, in start order.
		kEnd := min(k.EndNs, to)
		if i > 0 {
			g := Gap{Before: in[i-1].Name, After: k.Name, AfterNo: i, AtUs: float64(end-from) / 1e3}
			if k.StartNs > end {
				g.Us = float64(k.StartNs-end) / 1e3
			}
			gaps = append(gaps, g.Us)
			s.LargestGaps = append(s.LargestGaps, g)
		}
		if i < TimelineKernels {
			s.Timeline = append(s.Timeline, Event{Name: k.Name, StartUs: (float64(k.StartNs) - float64(from)) / 1e3, Us: float64(d) / 1e3})
		}
		switch {
		case i == 0 || k.StartNs >= end:
			if kEnd > k.StartNs {
				busy += kEnd - k.StartNs
			}
			end = max(end, kEnd)
		case kEnd > end:
			busy += kEnd - end
			end = kEnd
		}
	}
	s.BusyUs = float64(busy) / 1e3
	s.IdleUs = max(0, s.SpanUs-s.BusyUs)
	if len(in) == 0 {
		s.LeadUs, s.TailUs = s.SpanUs, s.SpanUs
	} else {
		s.LeadUs = float64(in[0].StartNs-from) / 1e3
		if to > end {
			s.TailUs = float64(to-end) / 1e3
		}
	}
	s.GapMedianUs = median(gaps)
	s.Gaps = make([]GapBucket, len(GapBuckets)+1)
	for i, b := range GapBuckets {
		s.Gaps[i].MaxUs = b
	}
	s.Gaps[len(GapBuckets)].MaxUs = -1
	for _, g := range gaps {
		i, _ := slices.BinarySearch(GapBuckets, g) // the first bound >= g
		s.Gaps[i].Count++
		s.Gaps[i].TotalUs += g
	}
	slices.SortStableFunc(s.LargestGaps, func(a, b Gap) int { return cmp.Compare(b.Us, a.Us) })
	s.LargestGaps = s.LargestGaps[:min(len(s.LargestGaps), LargestGaps)]
	for kk, ds := range durs {
		st := Stat{Name: kk.name, Grid: kk.grid, Block: kk.block, Count: len(ds), FirstOrder: first[kk]}
		for _, d := range ds {
			st.TotalUs += d
		}
		st.MeanUs = st.TotalUs / float64(len(ds))
		st.MedianUs = median(ds)
		st.MinUs, st.MaxUs = slices.Min(ds), slices.Max(ds)
		if s.BusyUs > 0 {
			st.ShareOfBusy = st.TotalUs / s.BusyUs
		}
		s.Stats = append(s.Stats, st)
	}
	slices.SortFunc(s.Stats, func(a, b Stat) int {
		if c := cmp.Compare(b.TotalUs, a.TotalUs); c != 0 {
			return c
		}
		return cmp.Compare(a.FirstOrder, b.FirstOrder)
	})
	return s
}

// median of xs (not modified), 0 when empty.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// Format writes s as a table: the region's totals, then its top kernels (all when top <= 0).
func (s Summary) Format(top int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d kernels in %.1f µs; busy %.1f µs (%.0f%%), idle %.1f µs (%.1f before the first kernel, %.1f after the last), median gap %.2f µs\n",
		s.Label, s.Kernels, s.SpanUs, s.BusyUs, pct(s.BusyUs, s.SpanUs), s.IdleUs, s.LeadUs, s.TailUs, s.GapMedianUs)
	fmt.Fprintf(&b, "  gaps between kernels:")
	lo := 0.0
	for _, g := range s.Gaps {
		if g.Count == 0 {
			lo = g.MaxUs
			continue
		}
		r := fmt.Sprintf("%g-%g µs", lo, g.MaxUs)
		switch {
		case g.MaxUs == 0:
			r = "none"
		case g.MaxUs < 0:
			r = fmt.Sprintf("> %g µs", lo)
		}
		fmt.Fprintf(&b, " %s: %d (%.1f µs);", r, g.Count, g.TotalUs)
		lo = g.MaxUs
	}
	b.WriteString("\n")
	for i, g := range s.LargestGaps {
		if i == 5 {
			break
		}
		fmt.Fprintf(&b, "  gap %.1f µs at %.1f µs, before kernel %d: %s → %s\n", g.Us, g.AtUs, g.AfterNo, shorten(g.Before, 40), shorten(g.After, 40))
	}
	fmt.Fprintf(&b, "  %8s %7s %9s %9s %6s  %-16s %-14s %s\n", "total µs", "count", "median µs", "max µs", "busy%", "grid", "block", "kernel")
	for i, st := range s.Stats {
		if top > 0 && i == top {
			fmt.Fprintf(&b, "  … %d more kernels\n", len(s.Stats)-top)
			break
		}
		fmt.Fprintf(&b, "  %8.1f %7d %9.2f %9.2f %6.1f  %-16s %-14s %s\n", st.TotalUs, st.Count, st.MedianUs, st.MaxUs,
			100*st.ShareOfBusy, dims(st.Grid), dims(st.Block), shorten(st.Name, 60))
	}
	return b.String()
}

func pct(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return 100 * a / b
}

func dims(d [3]int32) string {
	if d[1] == 1 && d[2] == 1 {
		return fmt.Sprint(d[0])
	}
	return fmt.Sprintf("%d×%d×%d", d[0], d[1], d[2])
}

func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
