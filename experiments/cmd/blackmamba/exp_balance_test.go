package main

import (
	"bytes"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
)

// TestBalanceFlags checks the balance experiment's flag handling: its own defaults, both flag
// spellings (-out x and -out=x), -in following -out unless given, the training experiment's
// other flags passed through, and the help listing the balance defaults.
func TestBalanceFlags(t *testing.T) {
	for _, c := range []struct {
		name           string
		args           []string
		result, plots  string
		wantTrainFlags []string
	}{
		{"defaults", nil, balanceResultPath, balancePlotDir,
			[]string{"-archs=blackmamba", "-ablation=true", "-out=" + balanceResultPath, "-in=" + balanceResultPath, "-plots=" + balancePlotDir, "-size=cpu-smoke"}},
		{"with =", []string{"-out=x.json", "-plots=p"}, "x.json", "p",
			[]string{"-out=x.json", "-in=x.json", "-plots=p"}},
		{"separate values", []string{"-out", "y.json", "--plots", "q", "-size", "gpu", "-steps", "5"}, "y.json", "q",
			[]string{"-out=y.json", "-in=y.json", "-plots=q", "-size=gpu", "-steps=5"}},
		{"plot-only reads -in", []string{"-plot-only", "-in=z.json", "-out=o.json"}, "z.json", balancePlotDir,
			[]string{"-plot-only=true", "-in=z.json", "-out=o.json"}},
		{"ablation off", []string{"-ablation=false", "-archs=blackmamba,-mamba"}, balanceResultPath, balancePlotDir,
			[]string{"-ablation=false", "-archs=blackmamba,-mamba"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs := flag.NewFlagSet("balance", flag.ContinueOnError)
			trainArgs, result, plots, err := balanceFlags(fs, c.args)
			if err != nil {
				t.Fatal(err)
			}
			if result != c.result || plots != c.plots {
				t.Errorf("result %q, plots %q; want %q, %q", result, plots, c.result, c.plots)
			}
			for _, w := range c.wantTrainFlags {
				if !slices.Contains(trainArgs, w) {
					t.Errorf("training arguments %q lack %q", trainArgs, w)
				}
			}
			// The arguments must be accepted by the training experiment's own flag set.
			probe := flag.NewFlagSet("training", flag.ContinueOnError)
			var out bytes.Buffer
			probe.SetOutput(&out)
			if err := runTrainingExperiment(probe, append(slices.Clone(trainArgs), "-h")); !errors.Is(err, flag.ErrHelp) {
				t.Errorf("training experiment rejects %q: %v %s", trainArgs, err, out.String())
			}
		})
	}
	for _, args := range [][]string{{"stray"}, {"-nonsense"}, {"-steps=many"}} {
		fs := flag.NewFlagSet("balance", flag.ContinueOnError)
		fs.SetOutput(&bytes.Buffer{})
		if _, _, _, err := balanceFlags(fs, args); err == nil {
			t.Errorf("args %q accepted", args)
		}
	}
	fs := flag.NewFlagSet("balance", flag.ContinueOnError)
	var help bytes.Buffer
	fs.SetOutput(&help)
	if _, _, _, err := balanceFlags(fs, []string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: error %v, want flag.ErrHelp", err)
	}
	for _, w := range []string{`(default "` + balanceResultPath + `")`, `(default "` + balancePlotDir + `")`, `(default "blackmamba")`, "-zero-shot"} {
		if !strings.Contains(help.String(), w) {
			t.Errorf("help does not show %s:\n%s", w, help.String())
		}
	}
	if strings.Contains(help.String(), "training.json") {
		t.Errorf("help shows the training experiment's result file:\n%s", help.String())
	}
}
