package main

import (
	"bytes"
	"flag"
	"math"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"

	"blackmamba/bm"
	"blackmamba/experiments/results"
	"blackmamba/xla"
)

// TestCheckDevices checks the -devices errors on the pure-Go backend (one device).
func TestCheckDevices(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		devices, batch int
		want           string // "" = accepted
	}{
		{1, 8, ""},
		{1, 7, ""},
		{0, 8, "-devices 0: want >= 1"},
		{3, 8, "-devices 3: the global batch 8 is not divisible"},
		{2, 8, "-devices 2: backend SimpleGo (go) has 1 device(s)"},
	} {
		err := checkDevices(backend, tc.devices, tc.batch)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("devices %d batch %d: unexpected error %v", tc.devices, tc.batch, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("devices %d batch %d: got %v, want an error containing %q", tc.devices, tc.batch, err, tc.want)
		}
	}
}

// TestCompareRuns checks the largest relative difference compareRuns reports: over training
// losses and held-out losses of the common steps, |a−b| / max(1, |a|).
func TestCompareRuns(t *testing.T) {
	rec := func(step int, loss float64, held map[string]float64) results.TrainRecord {
		return results.TrainRecord{Step: step, Loss: loss, GradNorm: 1, HeldOut: held}
	}
	a := []results.TrainRecord{rec(1, 10, nil), rec(2, 8, nil), rec(3, 0.5, map[string]float64{"web": 4})}
	for _, tc := range []struct {
		name    string
		b       []results.TrainRecord
		maxStep int
		want    float64
		err     string
	}{
		{"identical", a, 0, 0, ""},
		{"loss of step 2", []results.TrainRecord{rec(1, 10, nil), rec(2, 8.04, nil), rec(3, 0.5, map[string]float64{"web": 4})}, 0, 0.005, ""},
		{"small loss, absolute", []results.TrainRecord{rec(1, 10, nil), rec(2, 8, nil), rec(3, 0.502, map[string]float64{"web": 4})}, 0, 0.002, ""},
		{"held-out", []results.TrainRecord{rec(1, 10, nil), rec(2, 8, nil), rec(3, 0.5, map[string]float64{"web": 4.2})}, 0, 0.05, ""},
		{"up to step 2", []results.TrainRecord{rec(1, 10.1, nil), rec(2, 8, nil), rec(3, 0.9, nil)}, 2, 0.01, ""},
		{"second run shorter", []results.TrainRecord{rec(1, 10, nil)}, 0, 0, ""},
		{"held-out domain missing", []results.TrainRecord{rec(3, 0.5, map[string]float64{"code": 4})}, 0, 0, `held-out "web"`},
		{"no common step", []results.TrainRecord{rec(7, 1, nil)}, 0, 0, "no record of the same step"},
	} {
		var buf bytes.Buffer
		got, err := compareRuns(&buf, a, tc.b, tc.maxStep)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: got error %v, want one containing %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s: got %v (%v), want %v", tc.name, got, err, tc.want)
		}
		if !strings.Contains(buf.String(), "largest relative loss difference") {
			t.Errorf("%s: output lacks the summary line:\n%s", tc.name, buf.String())
		}
	}
}

// TestCheckShardExperts checks that -shard-experts is refused for a model without MoE blocks.
func TestCheckShardExperts(t *testing.T) {
	for _, name := range []string{"tiny", "tiny-mamba", "tiny-transformer"} {
		cfg, err := bm.LoadConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkShardExperts(cfg, false); err != nil {
			t.Errorf("%s without -shard-experts: %v", name, err)
		}
		err = checkShardExperts(cfg, true)
		moe := strings.Contains(cfg.Pattern, "8")
		if moe && err != nil {
			t.Errorf("%s (pattern %s): %v", name, cfg.Pattern, err)
		}
		if !moe && (err == nil || !strings.Contains(err.Error(), "has no MoE blocks")) {
			t.Errorf("%s (pattern %s): got %v, want the no-MoE error", name, cfg.Pattern, err)
		}
	}
}

// TestSelfCheckSubset runs `selfcheck -checks blocks` on the pure-Go backend (it must pass and
// run only that check) and checks the error for an unknown check name.
func TestSelfCheckSubset(t *testing.T) {
	out, err := captureStdout(t, func() error {
		return runSelfCheck(flag.NewFlagSet("selfcheck", flag.ContinueOnError), []string{"-backend", "go", "-checks", "blocks"})
	})
	if err != nil {
		t.Fatalf("selfcheck -checks blocks: %v\n%s", err, out)
	}
	if !strings.Contains(out, "\nblocks   ok") || strings.Contains(out, "\nscan ") || strings.Contains(out, "\ndecode ") ||
		!strings.Contains(out, "self-checks passed: blocks") {
		t.Errorf("selfcheck -checks blocks printed:\n%s", out)
	}
	err = runSelfCheck(flag.NewFlagSet("selfcheck", flag.ContinueOnError), []string{"-backend", "go", "-checks", "blocks,scna"})
	if err == nil || !strings.Contains(err.Error(), `unknown check "scna"`) {
		t.Errorf("-checks blocks,scna: got %v, want an error naming scna", err)
	}
}
