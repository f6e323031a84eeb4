package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"blackmamba/experiments/balance"
	"blackmamba/experiments/training"
)

func init() {
	registerExperiment(&command{
		name: "balance",
		summary: "expert balance: train BlackMamba with its Sinkhorn routing and the ablation routings (" +
			strings.Join(training.AblationRoutings, ", ") + ") on the same data, route held-out text through each, " +
			"plot tokens per expert per layer and print the ablation table (final held-out loss, balance, Sinkhorn " +
			"rounds). The flags are those of \"experiment training\", with the defaults of this experiment",
		run: runBalanceExperiment,
	})
}

// Where the balance experiment writes by default.
const (
	balanceResultPath = "experiments/results/balance.json"
	balancePlotDir    = "plots/balance"
)

// balanceFlagDefaults are the training-experiment flags whose defaults and help differ here.
var balanceFlagDefaults = map[string]struct{ value, usage string }{
	"archs":    {"blackmamba", `comma-separated preset suffixes of the family to train besides the ablation; "blackmamba" (or "") is BlackMamba with its own Sinkhorn routing`},
	"ablation": {"true", "also train BlackMamba with the routings " + strings.Join(training.AblationRoutings, ", ")},
	"out":      {balanceResultPath, "result JSON: the training-experiment result of the runs, each MoE run with its held-out routing analysis"},
	"in":       {"", "result JSON read by -plot-only (default: -out)"},
	"plots":    {balancePlotDir, "folder for the balance figures and the runs' training figures (PNG and SVG)"},
	"workdir":  {filepath.Join(os.TempDir(), "blackmamba-balance"), "parent folder of the run directories (each is removed before its run starts, unless -resume)"},
}

// balanceFlags defines on fs the flags of the training experiment with the balance experiment's
// defaults and help (balanceFlagDefaults), and parses args. It returns the arguments that run
// the training experiment with every parsed value, the result file to read afterwards (-in
// with -plot-only, else -out) and the figures' folder.
func balanceFlags(fs *flag.FlagSet, args []string) (trainArgs []string, result, plotDir string, err error) {
	// The training experiment defines its flags on the set it is given: let it define them on a
	// silent set and stop at "-h", then copy them here.
	probe := flag.NewFlagSet("training flags", flag.ContinueOnError)
	probe.SetOutput(io.Discard)
	probe.Usage = func() {}
	if perr := runTrainingExperiment(probe, []string{"-h"}); !errors.Is(perr, flag.ErrHelp) {
		return nil, "", "", fmt.Errorf("reading the flags of the training experiment: %v", perr)
	}
	probe.VisitAll(func(f *flag.Flag) {
		usage := f.Usage
		if d, ok := balanceFlagDefaults[f.Name]; ok {
			if serr := f.Value.Set(d.value); serr != nil && err == nil {
				err = fmt.Errorf("default of -%s: %w", f.Name, serr)
			}
			usage = d.usage
		}
		fs.Var(f.Value, f.Name, usage)
	})
	if err != nil {
		return nil, "", "", err
	}
	if err := fs.Parse(args); err != nil {
		return nil, "", "", err
	}
	if fs.NArg() > 0 {
		return nil, "", "", fmt.Errorf("unexpected arguments %q (flags only; see -h)", fs.Args())
	}
	value := func(name string) string { return fs.Lookup(name).Value.String() }
	if value("in") == "" {
		if err := fs.Set("in", value("out")); err != nil {
			return nil, "", "", err
		}
	}
	fs.VisitAll(func(f *flag.Flag) { trainArgs = append(trainArgs, "-"+f.Name+"="+f.Value.String()) })
	result = value("out")
	if value("plot-only") == "true" {
		result = value("in")
	}
	return trainArgs, result, value("plots"), nil
}

// runBalanceExperiment is the training experiment restricted by default to BlackMamba and its
// routing ablation (result in experiments/results/balance.json), followed by the balance figures
// of the runs' held-out routing analyses and the ablation table.
func runBalanceExperiment(fs *flag.FlagSet, args []string) error {
	trainArgs, result, plotDir, err := balanceFlags(fs, args)
	if err != nil {
		return err
	}
	if err := runTrainingExperiment(flag.NewFlagSet(fs.Name(), flag.ContinueOnError), trainArgs); err != nil {
		return err
	}
	runs, err := balance.ReadAny(result)
	if err != nil {
		return err
	}
	if err := plotBalance(runs, plotDir); err != nil {
		return err
	}
	fmt.Printf("\nRouting ablation (%s; balance on all held-out domains):\n\n%s", result, balance.AblationMarkdown(balance.Ablation(runs)))
	return nil
}

// plotBalance draws, from the runs of a balance result, the per-layer tokens-per-expert grid
// and heat map of each run's held-out routing, the mean balance per run and routing, and the
// balance over training.
func plotBalance(runs []balance.Run, dir string) error {
	ablation := map[string][]balance.Result{}
	for _, run := range runs {
		if len(run.Results) == 0 {
			fmt.Printf("%s: no balance analysis (%s)\n", run.Label, run.Error)
			continue
		}
		ablation[run.Label] = run.Results
	}
	if err := balance.PlotAll(balance.AllResults(runs), ablation, dir); err != nil {
		return err
	}
	if over := balance.OverTraining(runs); len(over) > 0 {
		if err := balance.PlotBalanceOverTraining(over, filepath.Join(dir, "balance_over_training.png")); err != nil {
			return err
		}
	}
	fmt.Printf("balance figures in %s\n", dir)
	return nil
}
