package main

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"blackmamba/experiments/bench"
	"blackmamba/xla/kerneltrace"
)

// TestParseChains checks -kernel-chains: the default round-trips (with its one-argument-per-matrix
// chains), and malformed entries are
// errors that quote the entry.
func TestParseChains(t *testing.T) {
	got, err := parseChains(formatChains(bench.DefaultChains))
	if err != nil || !slices.Equal(got, bench.DefaultChains) {
		t.Errorf("default chains: got %v, %v; want %v", got, err, bench.DefaultChains)
	}
	if got, err := parseChains(" 8x16x3 ,4x4x1s,8x8x2r2,8x8x2r3s"); err != nil || !slices.Equal(got, []bench.Chain{{In: 8, Out: 16, K: 3}, {In: 4, Out: 4, K: 1, Split: true}, {In: 8, Out: 8, K: 2, Rows: 2}, {In: 8, Out: 8, K: 2, Rows: 3, Split: true}}) {
		t.Errorf("8x16x3,4x4x1s,8x8x2r2,8x8x2r3s: got %v, %v", got, err)
	}
	for _, bad := range []string{"8x16", "8x16x0", "0x4x4", "8x16x3x1", "8x16x3,", "ax4x4", "-1x4x4", "8x16x3ss", "s", "8x16x3r0", "8x16x3r", "8x16x3r2x"} {
		if _, err := parseChains(bad); err == nil || !strings.Contains(err.Error(), "INxOUTxK") {
			t.Errorf("parseChains(%q): error %v, want one naming INxOUTxK", bad, err)
		}
	}
}

// TestBenchKernelTraceNeedsCUPTI: -kernel-trace on a machine without CUPTI (or with a CUPTI path
// that does not exist) stops the bench before it measures anything, with an error naming what
// is missing, and -cpuprofile writes a profile.
func TestBenchKernelTraceNeedsCUPTI(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(kerneltrace.EnvLibrary, filepath.Join(dir, "libcupti.so.13"))
	fs := flag.NewFlagSet("blackmamba bench", flag.ContinueOnError)
	err := runBench(fs, []string{"-backend", "go", "-what", "graph", "-config", "tiny", "-batch", "1", "-seq", "8",
		"-kernel-trace", filepath.Join(dir, "trace.json"), "-cpuprofile", filepath.Join(dir, "cpu.pprof")})
	if err == nil || !strings.Contains(err.Error(), "-kernel-trace") || !strings.Contains(err.Error(), "libcupti.so.13") {
		t.Fatalf("bench -kernel-trace without CUPTI: %v, want an error naming the flag and the library", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "trace.json")); err == nil {
		t.Errorf("a trace file was written although tracing could not start")
	}
	if fi, err := os.Stat(filepath.Join(dir, "cpu.pprof")); err != nil || fi.Size() == 0 {
		t.Errorf("-cpuprofile: %v", err)
	}
}
