package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"

	"blackmamba/bm"
	"blackmamba/experiments/bench"
	"blackmamba/xla"
	"blackmamba/xla/kerneltrace"
)

func init() {
	register(&command{
		name:    "bench",
		summary: "time the scan, the MoE block and the training step; print a table and write JSON",
		run:     runBench,
	})
}

func runBench(fs *flag.FlagSet, args []string) error {
	backendFlag := xla.AddFlag(fs)
	what := fs.String("what", "scan,moe,train-step", "comma-separated benchmarks: scan, moe, train-step, breakdown (each block kind of -config timed alone at -batch x -seq), graph (operation counts of the training graph, built but not compiled), router (the expert choice alone: argmax and both Sinkhorns on -moe-tokens logits), decode (batch-1 greedy generation of -decode-tokens tokens with random weights stored in the compute dtype), kernels (chains of dependent row-vector products, -kernel-chains, in -dtype, default bfloat16: what the kernels of a batch-1 decode step cost apart from the model)")
	scanShape := fs.String("scan-shape", "8,2048,1536,16", "scan shape B,T,D,N")
	scanVariants := fs.String("scan-variants", "all", `"all" (bm.ScanBenchVariants: chunk sizes and backward variants), "quick" (those of "all" with chunks of at most 16, without automatic differentiation), "default", or a comma-separated list of variant names as the table prints them (e.g. "default,chunked/L16/auto/recompute/cached")`)
	cfgName := fs.String("config", "small", "model preset or JSON config for moe, train-step, breakdown, graph and decode")
	dtype := fs.String("dtype", "", `override compute dtype ("float32" or "bfloat16") for moe, train-step, breakdown, graph and decode`)
	batch := fs.Int("batch", 8, "train-step batch size")
	seqLen := fs.Int("seq", 2048, "train-step sequence length")
	moeTokens := fs.Int("moe-tokens", 16384, "tokens through the MoE block")
	decodeTokens := fs.Int("decode-tokens", 256, "decode: tokens generated per timed pass after a one-token prompt (at least 2)")
	decodeBatch := fs.String("decode-batch", "1", "decode: comma-separated numbers of sequences generated together, one row each (with every -decode-unroll)")
	decodeUnroll := fs.String("decode-unroll", "1", "decode: comma-separated greedy steps per executable call, one row each (1: a call per token; k > 1 unrolls k steps into one graph)")
	decodeStepRows := fs.String("decode-step-rows", "0", "decode: comma-separated rows of the step's weight products (bm.Config.StepRows; 0: not padded, 2: a batch-1 step's products stay matrix multiplications on a GPU), one row each")
	decodeWeights := fs.String("decode-step-weights", "inout", `decode: comma-separated layouts of the weights the steps read, one row each: "inout" (the model's [in, out]), "transposed" (bm.TransposeStepWeights' [out, in] copies) or "folded" (bm.FoldStepWeights: those copies, the blocks' first products with the norm gain folded in)`)
	decodeFuse := fs.String("decode-step-fuse", "none", `decode: comma-separated bm.Config.StepFuse values, one row each: "none", or fusions joined by "+" from `+stepFusionNames()+` (e.g. "residual+router+ring"); they change the batch-1 steps of the "folded" layout only`)
	decodeLoop := fs.String("decode-loop", "held", `decode: comma-separated ways of running the steps, one row each: "held" (each call's tokens kept as tensors, the position sent from the host: bm.GreedyDecoder.StepsGreedy), "resident" (every input of a call kept on the device and donated, on XLA written over by the call's outputs, one executable; the tokens read at the end: GenerateResident; on XLA the calls are launched ahead of the device, a few in flight) or "resident-sync" (the same, waiting for each call to finish: bm.GreedyDecoder.SyncCalls)`)
	kernelChains := fs.String("kernel-chains", formatChains(bench.DefaultChains), "kernels: comma-separated chains INxOUTxK[rROWS][s] (K dependent products of a row vector, or with rROWS of that many equal rows, with [OUT, IN] and [IN, OUT] matrices in turn; a trailing s passes each matrix as its own argument), one row each")
	reps := fs.Int("reps", 10, "timed repetitions after warm-up (the median is reported)")
	devices := fs.Int("devices", 1, "train-step: data-parallel on this many devices of the backend (-batch is the global batch)")
	alias := fs.String("alias", "auto", "train-step: write the updated variables into their own buffers (train.Config.Alias): auto (on one device), on or off")
	shardExperts := fs.Bool("shard-experts", false, "train-step with -devices > 1: split the MoE experts' weights and optimizer moments over the devices (expert parallelism) instead of replicating them")
	out := fs.String("json", "", "write the report as JSON to this file")
	check := fs.Bool("check", false, "check the scan variants against the float64 reference before timing them")
	kernelTrace := fs.String("kernel-trace", "", "record the GPU kernels of each timed region with CUPTI (found next to the PJRT plugin, or $"+kerneltrace.EnvLibrary+"): each row gets trace_* figures, and this JSON file every region's kernels, by name, grid and block, with their times (every benchmark but graph)")
	cpuProfile := fs.String("cpuprofile", "", "write a Go CPU profile of the whole run to this file (go tool pprof): where the host spends its time, e.g. between a decode step's kernels")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile %s: %w", *cpuProfile, err)
		}
		defer pprof.StopCPUProfile()
	}
	backend, choice, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "backend: %s\n", choice)
	if *kernelTrace != "" {
		stop, err := startKernelTrace(*kernelTrace, choice)
		if err != nil {
			return err
		}
		defer stop()
	}
	if strings.Contains(*what, "decode") && *decodeTokens < 2 {
		return fmt.Errorf("-decode-tokens %d: want at least 2 (the prompt's token and one step)", *decodeTokens)
	}
	if *reps < 1 {
		return fmt.Errorf("-reps %d: want at least 1", *reps)
	}
	unrolls, err := parsePositiveList("-decode-unroll", *decodeUnroll, "number of steps")
	if err != nil {
		return err
	}
	batches, err := parsePositiveList("-decode-batch", *decodeBatch, "batch size")
	if err != nil {
		return err
	}
	stepRows, err := parseStepRows(*decodeStepRows)
	if err != nil {
		return err
	}
	var fuses []string // per -decode-step-fuse entry, as bm.Config.StepFuse
	for _, f := range strings.Split(*decodeFuse, ",") {
		f = strings.TrimSpace(f)
		if f == "none" {
			f = ""
		}
		f = strings.ReplaceAll(f, "+", ",")
		if err := bm.CheckStepFuse(f); err != nil {
			return fmt.Errorf("-decode-step-fuse %q: %w", *decodeFuse, err)
		}
		fuses = append(fuses, f)
	}
	chains, err := parseChains(*kernelChains)
	if err != nil {
		return err
	}
	var loops []bench.Loop // per -decode-loop entry
	for _, f := range strings.Split(*decodeLoop, ",") {
		l, err := bench.ParseLoop(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("-decode-loop %q: %w", *decodeLoop, err)
		}
		loops = append(loops, l)
	}
	var layouts []bm.StepLayout // per -decode-step-weights entry
	for _, f := range strings.Split(*decodeWeights, ",") {
		l, err := bm.ParseStepLayout(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("-decode-step-weights %q: %w", *decodeWeights, err)
		}
		layouts = append(layouts, l)
	}
	if strings.Contains(*what, "train-step") {
		if err := checkDevices(backend, *devices, *batch); err != nil {
			return err
		}
	}
	desc := xla.Describe(backend)
	report := bench.Report{Date: time.Now().UTC().Format(time.RFC3339), Backend: desc.Summary, Hardware: hardware(desc)}
	cfg, err := bm.LoadConfig(*cfgName)
	if err != nil {
		return err
	}
	if *dtype != "" {
		cfg.ComputeDType = *dtype
		if err := cfg.Validate(); err != nil {
			return err
		}
	}
	partial := report // rows measured so far by the running MoE or breakdown benchmark
	bench.OnRow = func(r bench.Row) {
		partial.Rows = append(partial.Rows, r)
		_ = bench.WriteTable(os.Stderr, []bench.Row{r})
		_ = writeReport(*out, partial)
	}
	for _, w := range strings.Split(*what, ",") {
		partial.Rows = slices.Clone(report.Rows)
		switch strings.TrimSpace(w) {
		case "scan":
			shape, err := parseScanShape(*scanShape)
			if err != nil {
				return err
			}
			var variants []bm.ScanOptions
			switch *scanVariants {
			case "all":
				variants = bm.ScanBenchVariants()
			case "quick":
				for _, v := range bm.ScanBenchVariants() {
					if !v.Autodiff && v.Chunk <= 16 {
						variants = append(variants, v)
					}
				}
			default: // "default" or a list of names, which may include "default"
				for _, name := range strings.Split(*scanVariants, ",") {
					v, err := bm.ParseScanOptions(strings.TrimSpace(name))
					if err != nil {
						return fmt.Errorf("-scan-variants: want all, quick, default or a list of variant names: %w", err)
					}
					variants = append(variants, v)
				}
			}
			for _, v := range variants { // one at a time, so that a time limit keeps the rows done
				rows, err := bench.Scan(backend, shape, []bm.ScanOptions{v}, *reps, *check)
				if err != nil {
					return fmt.Errorf("scan self-check failed on this backend: %w", err)
				}
				report.Rows = append(report.Rows, rows...)
				_ = bench.WriteTable(os.Stderr, rows)
				if err := writeReport(*out, report); err != nil {
					return err
				}
			}
		case "moe":
			report.Rows = append(report.Rows, bench.MoE(backend, cfg, moeExperts(cfg), *moeTokens, *reps)...)
		case "router":
			report.Rows = append(report.Rows, bench.Router(backend, cfg, moeExperts(cfg), *moeTokens, *reps)...)
		case "graph":
			report.Rows = append(report.Rows, bench.GraphSize(backend, cfg, *batch, *seqLen))
		case "breakdown":
			report.Rows = append(report.Rows, bench.Breakdown(backend, cfg, *batch, *seqLen, *reps)...)
		case "decode":
			for _, rows := range stepRows {
				for _, fuse := range fuses {
					c := cfg
					c.StepRows, c.StepFuse = rows, fuse
					for _, layout := range layouts {
						for _, b := range batches {
							for _, k := range unrolls {
								for _, loop := range loops {
									report.Rows = append(report.Rows, bench.DecodeWith(backend, c, b, *decodeTokens, k, *reps, layout, loop))
								}
							}
						}
					}
				}
			}
		case "kernels":
			kdt := dtypes.BFloat16 // -dtype is checked with the config above
			if *dtype == "float32" {
				kdt = dtypes.Float32
			}
			report.Rows = append(report.Rows, bench.Kernels(backend, chains, kdt, *reps)...)
		case "train-step":
			if err := checkShardExperts(cfg, *shardExperts); err != nil {
				return err
			}
			row := bench.TrainStepDevices(backend, cfg, *batch, *seqLen, *reps, *devices, *shardExperts, *alias)
			if *devices > 1 && xla.MemoryIsHighWater() {
				for i, used := range xla.DevicesMemoryUsed() {
					if i < *devices {
						row.Extra[fmt.Sprintf("peak_gib_gpu%d", i)] = float64(used) / (1 << 30)
					}
				}
			}
			report.Rows = append(report.Rows, row)
		case "":
		default:
			return fmt.Errorf("-what: unknown benchmark %q (want scan, moe, router, train-step, breakdown, graph, decode, kernels)", w)
		}
		if xla.MemoryIsHighWater() {
			// The allocator only grows: the device's used memory is this process's high-water mark.
			for i := range report.Rows {
				if report.Rows[i].PeakBytes <= 0 {
					report.Rows[i].PeakBytes = xla.DeviceMemoryUsed()
				}
			}
		}
		_ = bench.WriteTable(os.Stderr, report.Rows[max(0, len(report.Rows)-1):])
		if err := writeReport(*out, report); err != nil {
			return err
		}
	}
	fmt.Printf("# %s, %s\n", report.Date, report.Hardware)
	if err := bench.WriteTable(os.Stdout, report.Rows); err != nil {
		return err
	}
	return writeReport(*out, report)
}

// startKernelTrace starts recording kernels for bench.Trace and writes every traced region's
// summary to path (rewritten after each one, so that a time limit keeps what was traced), with
// its 30 largest kernels on stderr. The returned function stops the trace.
func startKernelTrace(path string, choice xla.Choice) (func(), error) {
	plugin := ""
	if choice.Plugin != nil {
		plugin = choice.Plugin.Path
	}
	lib, err := kerneltrace.Find(plugin)
	if err != nil {
		return nil, fmt.Errorf("-kernel-trace: %w", err)
	}
	tr, err := kerneltrace.Start(lib)
	if err != nil {
		return nil, fmt.Errorf("-kernel-trace: %w", err)
	}
	fmt.Fprintf(os.Stderr, "kernel trace: CUPTI %s (API version %d), regions to %s\n", tr.Library, tr.Version, path)
	type traced struct {
		Row     bench.Row           `json:"row"`
		Summary kerneltrace.Summary `json:"summary"`
	}
	var all []traced
	bench.Trace = tr
	bench.OnTrace = func(r bench.Row, s kerneltrace.Summary) {
		all = append(all, traced{r, s})
		fmt.Fprint(os.Stderr, s.Format(30))
		b, err := json.MarshalIndent(all, "", "  ")
		if err == nil {
			err = os.WriteFile(path, append(b, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "-kernel-trace: writing %s: %v\n", path, err)
		}
	}
	return func() {
		bench.Trace, bench.OnTrace = nil, nil
		if err := tr.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}, nil
}

// moeExperts returns the expert count of cfg's MoE blocks (the last one's), or 8 for a config
// without MoE blocks (the MoE and router benchmarks then use BlackMamba's count).
func moeExperts(cfg bm.Config) int {
	experts := 8
	for _, b := range cfg.Blocks() {
		if b.Kind == bm.KindMoE {
			experts = b.Experts
		}
	}
	return experts
}

// writeReport writes the report as JSON to path (nothing when path is empty). The benchmarks
// call it after each measurement, so that a run stopped by a time limit keeps what it measured.
func writeReport(path string, report bench.Report) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func parseScanShape(s string) (bm.ScanShape, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return bm.ScanShape{}, fmt.Errorf("-scan-shape %q: want B,T,D,N", s)
	}
	var v [4]int
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 {
			return bm.ScanShape{}, fmt.Errorf("-scan-shape %q: %q is not a positive integer", s, p)
		}
		v[i] = n
	}
	return bm.ScanShape{B: v[0], T: v[1], D: v[2], N: v[3]}, nil
}

// hardware names the device the way result files record it.
func hardware(d xla.Description) string {
	if len(d.GPUs) > 0 {
		g := d.GPUs[0]
		return fmt.Sprintf("%d x %s (%.0f GiB), %s", len(d.GPUs), g.Name, float64(g.MemoryTotal)/(1<<30), d.CPUModel)
	}
	return fmt.Sprintf("CPU %s, %d cores", d.CPUModel, d.CPUCores)
}

// parsePositiveList reads the comma-separated positive integers of flag (what names one).
func parsePositiveList(flag, s, what string) ([]int, error) {
	var ks []int
	for _, f := range strings.Split(s, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || k < 1 {
			return nil, fmt.Errorf("%s %q: %q is not a positive %s", flag, s, f, what)
		}
		ks = append(ks, k)
	}
	return ks, nil
}

// parseStepRows parses -decode-step-rows: comma-separated integers from 0 to bm.MaxStepRows.
func parseStepRows(s string) ([]int, error) {
	var rows []int
	for _, f := range strings.Split(s, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || k < 0 || k > bm.MaxStepRows {
			return nil, fmt.Errorf("-decode-step-rows %q: %q is not a number of rows from 0 to %d", s, f, bm.MaxStepRows)
		}
		rows = append(rows, k)
	}
	return rows, nil
}

// parseChains reads -kernel-chains: comma-separated INxOUTxK, all positive, each with an "s"
// after K for one argument per matrix (bench.Chain.Split).
func parseChains(s string) ([]bench.Chain, error) {
	var cs []bench.Chain
	for _, f := range strings.Split(s, ",") {
		var c bench.Chain
		f = strings.TrimSpace(f)
		body, split := strings.CutSuffix(f, "s")
		c.Split = split
		if head, rows, ok := strings.Cut(body, "r"); ok {
			if n, err := fmt.Sscanf(rows, "%d", &c.Rows); err != nil || n != 1 || c.Rows < 1 || rows != fmt.Sprint(c.Rows) {
				return nil, fmt.Errorf("-kernel-chains %q: %q is not INxOUTxK[rROWS][s]: the rows after r must be a positive number", s, f)
			}
			body = head
		}
		if n, err := fmt.Sscanf(body, "%dx%dx%d", &c.In, &c.Out, &c.K); err != nil || n != 3 || c.In < 1 || c.Out < 1 || c.K < 1 || body != fmt.Sprintf("%dx%dx%d", c.In, c.Out, c.K) {
			return nil, fmt.Errorf("-kernel-chains %q: %q is not INxOUTxK[rROWS][s] (rROWS: that many input rows; s: one argument per matrix) with positive numbers", s, f)
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// formatChains writes chains as -kernel-chains reads them.
func formatChains(cs []bench.Chain) string {
	fs := make([]string, len(cs))
	for i, c := range cs {
		fs[i] = fmt.Sprintf("%dx%dx%d", c.In, c.Out, c.K)
		if c.Rows > 1 {
			fs[i] += fmt.Sprintf("r%d", c.Rows)
		}
		if c.Split {
			fs[i] += "s"
		}
	}
	return strings.Join(fs, ",")
}
