package main

import (
	"slices"
	"strings"
	"testing"

	"blackmamba/experiments/bench"
)

// TestParseChains checks -kernel-chains: the default round-trips (with its one-argument-per-matrix
// chains), and malformed entries are
// errors that quote the entry.
func TestParseChains(t *testing.T) {
	got, err := parseChains(formatChains(bench.DefaultChains))
	if err != nil || !slices.Equal(got, bench.DefaultChains) {
		t.Errorf("default chains: got %v, %v; want %v", got, err, bench.DefaultChains)
	}
	if got, err := parseChains(" 8x16x3 ,4x4x1s"); err != nil || !slices.Equal(got, []bench.Chain{{In: 8, Out: 16, K: 3}, {In: 4, Out: 4, K: 1, Split: true}}) {
		t.Errorf("8x16x3,4x4x1s: got %v, %v", got, err)
	}
	for _, bad := range []string{"8x16", "8x16x0", "0x4x4", "8x16x3x1", "8x16x3,", "ax4x4", "-1x4x4", "8x16x3ss", "s"} {
		if _, err := parseChains(bad); err == nil || !strings.Contains(err.Error(), "INxOUTxK") {
			t.Errorf("parseChains(%q): error %v, want one naming INxOUTxK", bad, err)
		}
	}
}
