package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"blackmamba/bm/tokenizer"
	"blackmamba/experiments/eval"
	"blackmamba/experiments/results"
	"blackmamba/experiments/training"
	"blackmamba/xla"
)

func init() {
	registerExperiment(&command{
		name: "training",
		summary: "train BlackMamba, dense Mamba, Transformer, Transformer-MoE and a total-matched Mamba on the same " +
			"data and token budget, plus BlackMamba with other routings (ablation); write JSON and plots",
		run: runTrainingExperiment,
	})
}

func runTrainingExperiment(fs *flag.FlagSet, args []string) error {
	backendFlag := xla.AddFlag(fs)
	size := fs.String("size", "cpu-smoke", `"gpu" (small family, T=512, B=16, bf16, 5M tokens per run; roughly a quarter of an hour on one H200 for all eight runs: split them with -archs, -ablation and -ablation-routings) or "cpu-smoke" (tiny family, a few steps)`)
	corpusDir := fs.String("corpus", "", "corpus directory (default data/corpus if built, else data/corpus-tiny)")
	tokens := fs.Int64("tokens", 0, "training tokens per run (0: the size's budget)")
	steps := fs.Int("steps", 0, "steps per run, overriding -tokens (0: from -tokens)")
	archs := fs.String("archs", "", `comma-separated preset suffixes of the family, "blackmamba" (or "") for BlackMamba itself, e.g. "blackmamba,-mamba" (default: all five); "none" for the ablation alone`)
	routings := fs.String("ablation-routings", "", "comma-separated routings of the ablation runs (default: all of "+strings.Join(training.AblationRoutings, ", ")+")")
	ablation := fs.Bool("ablation", true, "also train BlackMamba with the routings "+strings.Join(training.AblationRoutings, ", "))
	family := fs.String("family", "", "preset family (default: the size's)")
	threshold := fs.Float64("threshold", 0, "mean held-out loss for the FLOPs-to-reach comparison (0: the worst final loss)")
	workdir := fs.String("workdir", filepath.Join(os.TempDir(), "blackmamba-training"), "parent folder of the run directories (each is removed before its run starts, unless -resume)")
	resume := fs.Bool("resume", false, "keep the run directories in -workdir and continue each run from its newest checkpoint; a finished run is loaded, not trained again")
	ckptEvery := fs.Int("checkpoint-every", 0, "steps between the checkpoints of each run, a multiple of the size's log interval (10 steps at gpu, 3 at cpu-smoke; 0: only at the end)")
	out := fs.String("out", "experiments/results/training.json", "result JSON")
	plotDir := fs.String("plots", "plots/training", "folder for the figures (PNG and SVG)")
	plotOnly := fs.Bool("plot-only", false, "only render the figures of the result -in")
	in := fs.String("in", "experiments/results/training.json", "result JSON read by -plot-only")
	tflops := fs.Float64("assume-tflops", 30, "sustained training TFLOP/s (model FLOPs) assumed by the time estimate; measured on an H200 for the small family at 16 x 512: 33 (BlackMamba) and 44 (dense Mamba)")
	zsTasks := fs.String("zero-shot", "", `zero-shot tasks to evaluate each trained model on (e.g. "piqa,arc_easy"; "all"); none by default`)
	zsData := fs.String("zero-shot-data", "", "folder of the zero-shot task files (see blackmamba eval)")
	zsLimit := fs.Int("zero-shot-limit", 500, "examples per zero-shot task (0: all)")
	merge := fs.String("merge", "", "comma-separated result JSONs of the same experiment run in parts: combine them into -out and plot (no training)")
	parallel := fs.Int("parallel", 1, "train this many runs at the same time on the backend (their compilations and small steps overlap; same results as one at a time)")
	devices := fs.Int("devices", 1, "train each run data-parallel on this many devices of the backend (the size's batch is the global batch)")
	mdPath := fs.String("md", "", "also write the Markdown tables (printed at the end) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *merge != "" {
		parts, err := results.ReadParts(*merge, training.ReadResult)
		if err != nil {
			return fmt.Errorf("-merge: %w", err)
		}
		r, err := training.Merge(*threshold, parts...)
		if err != nil {
			return fmt.Errorf("-merge: %w", err)
		}
		if err := r.WriteJSON(*out); err != nil {
			return err
		}
		fmt.Println(*out)
		return reportTraining(r, *plotDir, *mdPath)
	}
	if *plotOnly {
		r, err := training.ReadResult(*in)
		if err != nil {
			return err
		}
		if *threshold > 0 {
			r.SetThreshold(*threshold)
		}
		return reportTraining(r, *plotDir, *mdPath)
	}
	o, err := training.Size(*size)
	if err != nil {
		return err
	}
	if *family != "" {
		o.Family = *family
	}
	if *tokens > 0 {
		o.Tokens = *tokens
	}
	if *steps > 0 {
		o.Tokens = int64(*steps) * int64(o.Batch*o.SeqLen)
	}
	if *archs == "none" {
		o.Architectures = training.NoArchitectures
	} else if *archs != "" {
		for _, a := range strings.Split(*archs, ",") {
			if a == "blackmamba" { // the family's own preset (suffix "")
				a = ""
			}
			o.Architectures = append(o.Architectures, a)
		}
	}
	o.Ablation = *ablation
	if *routings != "" {
		o.Routings = strings.Split(*routings, ",")
	}
	if *parallel < 1 {
		return fmt.Errorf("-parallel %d: want at least 1", *parallel)
	}
	o.Parallel = *parallel
	o.Threshold = *threshold
	if *zsTasks != "" {
		if o.ZeroShot.Tasks, err = eval.ParseTaskList(*zsTasks); err != nil {
			return fmt.Errorf("-zero-shot: %w", err)
		}
		if *zsData == "" {
			return fmt.Errorf("-zero-shot needs -zero-shot-data, the folder of the task files")
		}
		tok, err := tokenizer.LoadNeoX(tokenizer.DefaultDataDir())
		if err != nil {
			return err
		}
		o.ZeroShot.Dir, o.ZeroShot.Limit, o.ZeroShot.Encoder = *zsData, *zsLimit, tok
	}
	o.Workdir, o.Resume = *workdir, *resume
	if *ckptEvery < 0 || *ckptEvery%o.LogEvery != 0 {
		return fmt.Errorf("-checkpoint-every %d: want 0 or a positive multiple of the log interval, %d steps", *ckptEvery, o.LogEvery)
	}
	o.CheckpointEvery = *ckptEvery
	if o.Corpus, err = openCorpus(*corpusDir); err != nil {
		return err
	}
	flops, secs, err := o.Estimate(*tflops*1e12, 60)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "training experiment: family %s, %d steps of %d x %d per run, %.3g training FLOPs in all; "+
		"at %.0f TFLOP/s and 60 s compilation per run about %.0f s\n", o.Family, o.Steps(), o.Batch, o.SeqLen, flops, *tflops, secs)
	backend, choice, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "backend: %s\n", choice)
	if err := checkDevices(backend, *devices, o.Batch); err != nil {
		return err
	}
	o.Devices = *devices
	o.AfterRun = func(partial *training.Result) error { return partial.WriteJSON(*out) }
	r, err := training.Run(backend, o)
	if err != nil {
		return err
	}
	if err := r.WriteJSON(*out); err != nil {
		return err
	}
	fmt.Printf("result %s\n", *out)
	return reportTraining(r, *plotDir, *mdPath)
}

// reportTraining draws the result's figures into plotDir and prints their paths, then prints
// the result's Markdown tables and writes them to mdPath if set.
func reportTraining(r *training.Result, plotDir, mdPath string) error {
	paths, err := training.PlotAll(r, plotDir)
	for _, p := range paths {
		fmt.Println(p)
	}
	var tables strings.Builder
	if terr := r.WriteTables(&tables); terr != nil {
		return errors.Join(err, terr)
	}
	fmt.Printf("\n%s", tables.String())
	if mdPath != "" {
		err = errors.Join(err, os.WriteFile(mdPath, []byte(tables.String()), 0o644))
	}
	return err
}
