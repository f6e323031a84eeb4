package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/gomlx/gomlx/backends"

	"blackmamba/bm"
	"blackmamba/experiments"
	"blackmamba/experiments/latency"
	"blackmamba/experiments/results"
	"blackmamba/xla"
)

func init() {
	c := &command{
		name: "latency",
		summary: "time greedy generation (batch 1, one-token prompt) of BlackMamba and its baselines at lengths " +
			"up to -max-len; writes a JSON result, plots and a Markdown table",
		run: runLatency,
	}
	register(c)
	registerExperiment(c)
}

func runLatency(fs *flag.FlagSet, args []string) error {
	family := fs.String("family", "1.5b", "architecture family: 1.5b, 2.8b or tiny (the CPU-size table)")
	archs := fs.String("archs", "", "comma-separated config presets to time instead of the family's four (e.g. add 1.5b-mamba-total)")
	maxLen := fs.Int("max-len", 0, "longest generation in tokens (default 16384; 128 for -family tiny)")
	minLen := fs.Int("min-len", 0, "shortest reported length; lengths double from it (default 128; 8 for tiny)")
	reps := fs.Int("reps", 0, "timed passes per architecture, medians and min/max reported (default 3; 1 for tiny)")
	seed := fs.Int64("seed", 1, "seed of the random weights")
	unroll := fs.Int("unroll", 1, "greedy steps per executable call (1: one call per token; k > 1 unrolls k steps into one graph, compiled once per KV-cache length)")
	stepRows := fs.Int("step-rows", 0, "rows of the decode step's weight products (bm.Config.StepRows): 2 keeps them matrix multiplications on a GPU, where XLA rewrites single-row products; 0: not padded")
	stepFuse := fs.String("step-fuse", "auto", `rearrangements of the folded layout's batch-1 step (bm.Config.StepFuse): a comma-separated list of `+stepFusionNames()+`; "none"; or "auto": `+experiments.DefaultStepFuse+` with the folded weights, else none`)
	stepWeights := fs.String("step-weights", "auto", "layout of the weights the decode steps read: inout (the model's), transposed (bm.TransposeStepWeights: [out, in] copies, row reductions on a GPU; the copies double the matmul weights' memory), folded (bm.FoldStepWeights: those copies with the norm gains folded into the blocks' first products) or auto (as generate: folded on an NVIDIA GPU and transposed on the pure-Go backend when the copies fit, else inout)")
	stepTransposed := fs.Bool("step-transposed", false, "the same as -step-weights transposed")
	resident := fs.Bool("resident", true, "run the steps with every input of a call kept on the device and donated, on XLA written over by the call's outputs, the tokens read at each checkpoint (bm.GreedyDecoder.GenerateResident), instead of one tensor per token; on XLA the calls after the first are launched ahead of the device (see -sync-calls). On an H200 the 1.5b sweep took 0.58-0.64 ms per token this way with -step-weights folded -step-fuse residual at one step per call")
	syncCalls := fs.Bool("sync-calls", false, "with -resident: wait for each call to finish before launching the next (bm.GreedyDecoder.SyncCalls); by default, on XLA, the calls are launched ahead of the device, a few in flight")
	out := fs.String("out", "experiments/results/latency.json", "result JSON to write")
	plotDir := fs.String("plots", "plots/latency", "directory for the PNG and SVG figures (empty: no plots)")
	plotOnly := fs.Bool("plot-only", false, "do not measure: plot and tabulate the result in -in")
	in := fs.String("in", "", "result JSON to read with -plot-only (default: -out)")
	merge := fs.String("merge", "", "comma-separated result JSONs of the same measurement run in parts (e.g. architectures on different GPUs): combine them into -out, then plot and tabulate (no timing)")
	mdPath := fs.String("md", "", "also write the Markdown tables to this file (they are always printed)")
	backendFlag := xla.AddFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("latency: unexpected arguments %q", fs.Args())
	}
	var res *latency.Result
	if *merge != "" {
		parts, err := results.ReadParts(*merge, latency.Load)
		if err != nil {
			return fmt.Errorf("-merge: %w", err)
		}
		if res, err = latency.Merge(parts...); err != nil {
			return fmt.Errorf("-merge: %w", err)
		}
		if err := latency.Save(res, *out); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
	} else if *plotOnly {
		path := *in
		if path == "" {
			path = *out
		}
		var err error
		if res, err = latency.Load(path); err != nil {
			return err
		}
	} else {
		layout, auto, err := experiments.ParseStepWeights(*stepWeights)
		if err != nil {
			return fmt.Errorf("-step-weights %w", err)
		}
		if *stepTransposed {
			if auto || layout == bm.StepInOut {
				layout, auto = bm.StepTransposed, false
			}
			if layout != bm.StepTransposed {
				return fmt.Errorf("-step-transposed and -step-weights %s contradict each other", layout)
			}
		}
		if err := experiments.CheckStepFuse(*stepFuse); err != nil {
			return fmt.Errorf("-step-fuse %q: %w", *stepFuse, err)
		}
		fuse := ""
		if !auto {
			if fuse, err = experiments.StepFuseFor(*stepFuse, layout); err != nil {
				return fmt.Errorf("-step-fuse: %w", err)
			}
		}
		backend, choice, err := xla.NewForDecoding(*backendFlag)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "backend: %s\n", choice)
		opts := latency.Options{Family: *family, MaxLen: *maxLen, MinLen: *minLen, Reps: *reps, Seed: *seed, Unroll: *unroll, StepRows: *stepRows, StepWeights: layout, StepFuse: fuse, Resident: *resident, SyncCalls: *syncCalls, Log: os.Stderr}
		if auto {
			opts.ChooseSteps = func(b backends.Backend, copyBytes int64) (bm.StepLayout, string, error) {
				l, err := experiments.StepLayoutFor("auto", b, copyBytes)
				if err != nil {
					return "", "", err
				}
				f, err := experiments.StepFuseFor(*stepFuse, l)
				return l, f, err
			}
		}
		if *archs != "" {
			opts.Archs = strings.Split(*archs, ",")
		}
		opts.AfterArch = func(partial *latency.Result) error { return latency.Save(partial, *out) }
		res, err = latency.Run(backend, opts)
		if res != nil && len(res.Archs) > 0 {
			if serr := latency.Save(res, *out); serr != nil {
				return serr
			}
			fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
		}
		if err != nil {
			return err
		}
	}
	if *plotDir != "" {
		paths, err := latency.PlotAll(res, *plotDir)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", strings.Join(paths, ", "))
	}
	if err := latency.WriteMarkdown(os.Stdout, res); err != nil {
		return err
	}
	if *mdPath != "" {
		f, err := os.Create(*mdPath)
		if err != nil {
			return err
		}
		defer f.Close()
		return latency.WriteMarkdown(f, res)
	}
	return nil
}
