package kerneltrace

import (
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func k(name string, start, end uint64) Kernel {
	return Kernel{Name: name, StartNs: start, EndNs: end, Grid: [3]int32{4, 1, 1}, Block: [3]int32{128, 1, 1}}
}

// TestSummarize checks busy, idle, gap and per-kernel figures on a hand-computed trace: two
// kernels that overlap, a gap, a kernel outside the region.
func TestSummarize(t *testing.T) {
	ks := []Kernel{
		k("b", 3000, 4000), // delivered out of order: Summarize sorts by start
		k("a", 1000, 2000),
		k("a", 1500, 2500), // overlaps the first a by 500 ns
		k("c", 9000, 9500), // starts at the region's end: excluded
		k("a", 500, 900),   // starts before the region: excluded
	}
	s := Summarize("r", ks, 1000, 9000)
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	if s.Kernels != 3 {
		t.Fatalf("kernels = %d, want 3", s.Kernels)
	}
	near("span", s.SpanUs, 8)
	near("busy", s.BusyUs, 2.5)             // [1000, 2500) and [3000, 4000)
	near("sum", s.SumUs, 3)                 // 1 + 1 + 1
	near("idle", s.IdleUs, 5.5)             // 8 − 2.5
	near("gap median", s.GapMedianUs, 0.25) // gaps 0 (overlap) and 0.5 µs
	near("lead", s.LeadUs, 0)               // a starts with the region
	near("tail", s.TailUs, 5)               // b ends at 4000, the region at 9000
	if s.Gaps[0].Count != 1 || s.Gaps[1].Count != 1 || s.Gaps[1].TotalUs != 0.5 {
		t.Errorf("gap buckets %+v, want one of none and one of 0.5 µs in 0-1 µs", s.Gaps[:2])
	}
	if g := s.LargestGaps[0]; g.Us != 0.5 || g.Before != "a" || g.After != "b" || g.AfterNo != 2 || g.AtUs != 1.5 {
		t.Errorf("largest gap %+v, want 0.5 µs at 1.5 µs from a to b (kernel 2)", g)
	}
	if len(s.Timeline) != 3 || s.Timeline[2].Name != "b" || s.Timeline[2].StartUs != 2 || s.Timeline[2].Us != 1 {
		t.Errorf("timeline %+v", s.Timeline)
	}
	if len(s.Stats) != 2 || s.Stats[0].Name != "a" || s.Stats[1].Name != "b" {
		t.Fatalf("stats = %+v, want a then b", s.Stats)
	}
	a := s.Stats[0]
	if a.Count != 2 || a.FirstOrder != 0 || s.Stats[1].FirstOrder != 2 {
		t.Errorf("a: count %d first %d, b first %d; want 2, 0, 2", a.Count, a.FirstOrder, s.Stats[1].FirstOrder)
	}
	near("a total", a.TotalUs, 2)
	near("a share", a.ShareOfBusy, 2/2.5)
	if out := s.Format(1); !strings.Contains(out, "3 kernels in 8.0 µs") || !strings.Contains(out, "(0.0 before the first kernel, 5.0 after the last)") ||
		!strings.Contains(out, "1 more kernels") {
		t.Errorf("Format:\n%s", out)
	}
	if late := Summarize("late", ks, 1200, 9000); late.LeadUs != 0.3 || late.TailUs != 5 { // a (1500) is the first to start inside
		t.Errorf("region from 1200: lead %v, tail %v; want 0.3 and 5", late.LeadUs, late.TailUs)
	}
	if e := Summarize("empty", nil, 0, 1000); e.Kernels != 0 || e.IdleUs != 1 || e.LeadUs != 1 || e.TailUs != 1 || len(e.Stats) != 0 {
		t.Errorf("empty region: %+v", e)
	}
}

// TestCheck rejects records that cannot be kernels (what a changed CUPTI layout would give).
func TestCheck(t *testing.T) {
	if err := Check([]Kernel{k("a", 1, 2)}); err != nil {
		t.Errorf("plausible kernel rejected: %v", err)
	}
	for _, bad := range []Kernel{k("", 1, 2), k("a", 5, 2), {Name: "a", StartNs: 1, EndNs: 2}} {
		if err := Check([]Kernel{k("a", 1, 2), bad}); err == nil || !strings.Contains(err.Error(), "record 2 of 2") {
			t.Errorf("Check(%+v) = %v, want an error naming record 2", bad, err)
		}
	}
}

// TestFind finds a libcupti next to a JAX-style plugin and honours the environment variable.
func TestFind(t *testing.T) {
	root := t.TempDir()
	plugin := filepath.Join(root, "site-packages", "jax_plugins", "xla_cuda13", "xla_cuda_plugin.so")
	lib := filepath.Join(root, "site-packages", "nvidia", "cu13", "lib", "libcupti.so.13")
	for _, f := range []string{plugin, lib} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(EnvLibrary, "")
	if got, err := Find(plugin); err != nil || got != lib {
		t.Errorf("Find = %q, %v; want %q", got, err, lib)
	}
	t.Setenv(EnvLibrary, filepath.Join(root, "missing.so"))
	if _, err := Find(plugin); err == nil || !strings.Contains(err.Error(), "missing.so") {
		t.Errorf("Find with a missing $%s: %v, want an error naming it", EnvLibrary, err)
	}
}

// TestStartBadLibrary: a library that is not CUPTI, or a missing file, gives an error naming it.
func TestStartBadLibrary(t *testing.T) {
	if _, err := Start("/nonexistent/libcupti.so"); err == nil || !strings.Contains(err.Error(), "/nonexistent/libcupti.so") {
		t.Errorf("missing library: %v", err)
	}
	if runtime.GOOS != "linux" {
		t.Skip("CUPTI loading is Linux only")
	}
	libc := ""
	for _, p := range []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6", "/lib64/libc.so.6"} {
		if _, err := os.Stat(p); err == nil {
			libc = p
			break
		}
	}
	if libc == "" {
		t.Skip("no libc.so.6 at the usual paths")
	}
	_, err := Start(libc)
	if err == ErrUnsupported {
		t.Skip("built without cgo")
	}
	if err == nil || !strings.Contains(err.Error(), "cuptiActivityEnable") {
		t.Errorf("Start(libc) = %v, want an error naming the missing CUPTI symbol", err)
	}
}
