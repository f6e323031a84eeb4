package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"strings"

	"blackmamba/experiments/balance"
	"blackmamba/experiments/results"
	"blackmamba/experiments/training"
)

func init() {
	registerExperiment(&command{
		name: "balance",
		summary: "expert balance: train BlackMamba with its Sinkhorn routing and the ablation routings (" +
			strings.Join(training.AblationRoutings, ", ") + ") on the same data, route held-out text through each, " +
			"and plot tokens per expert per layer; takes the flags of \"experiment training\"",
		run: runBalanceExperiment,
	})
}

// runBalanceExperiment is the training experiment restricted to BlackMamba and its routing
// ablation (its flags, with the result in experiments/results/balance.json), followed by the
// balance figures of the runs' held-out routing analyses.
func runBalanceExperiment(fs *flag.FlagSet, args []string) error {
	plotDir := "plots/balance"
	out := "experiments/results/balance.json"
	for i, a := range args { // the training experiment's flags decide; read the two used here
		if i+1 < len(args) && (a == "-plots" || a == "--plots") {
			plotDir = args[i+1]
		}
		if i+1 < len(args) && (a == "-out" || a == "--out" || a == "-in" || a == "--in") {
			out = args[i+1]
		}
	}
	defaults := []string{"-archs", "blackmamba", "-ablation", "-out", out, "-in", out, "-plots", plotDir}
	if err := runTrainingExperiment(fs, append(defaults, args...)); err != nil {
		return err
	}
	r, err := training.ReadResult(out)
	if err != nil {
		return err
	}
	return plotBalance(r, plotDir)
}

// plotBalance draws, from a training-experiment result, the per-layer tokens-per-expert grid
// and heat map of each MoE run's held-out routing, the mean balance per run and routing, and
// the balance over training.
func plotBalance(r *training.Result, dir string) error {
	ablation := map[string][]balance.Result{}
	over := map[string][]results.TrainRecord{}
	var all []balance.Result
	for _, run := range r.Runs {
		if !run.MoE {
			continue
		}
		over[run.Label] = run.Records
		if len(run.Balance) == 0 {
			fmt.Printf("%s: no balance analysis (%s)\n", run.Label, run.BalanceError)
			continue
		}
		var rs []balance.Result
		if err := json.Unmarshal(run.Balance, &rs); err != nil {
			return fmt.Errorf("%s: balance analysis: %w", run.Label, err)
		}
		for i := range rs {
			rs[i].Model = run.Label
		}
		ablation[run.Label] = rs
		all = append(all, rs...)
	}
	if err := balance.PlotAll(all, ablation, dir); err != nil {
		return err
	}
	if err := balance.PlotBalanceOverTraining(over, filepath.Join(dir, "balance_over_training.png")); err != nil {
		return err
	}
	fmt.Printf("balance figures in %s\n", dir)
	return nil
}
