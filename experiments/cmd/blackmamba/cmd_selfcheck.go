package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"

	"blackmamba/bm"
	"blackmamba/xla"
)

func init() {
	register(&command{
		name: "selfcheck",
		summary: "check the backend's scan, MoE dispatch, Sinkhorn, attention cache and recurrent decoder " +
			"against the references (run it once on a new GPU)",
		run: runSelfCheck,
	})
}

func runSelfCheck(fs *flag.FlagSet, args []string) error {
	backendFlag := xla.AddFlag(fs)
	tf32 := fs.Bool("tf32", false, "keep XLA's default TF32 float32 matmuls on NVIDIA GPUs (their rounding, ~1e-3, exceeds the checks' float32 tolerances)")
	only := fs.String("checks", "scan,blocks,decode", "comma-separated checks to run: scan (the selective scan against float64), blocks (MoE dispatch, Sinkhorn, attention cache), decode (the recurrent decoder in every step layout against the parallel forward)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Each check prints its report lines through emit; the decoder check as each of its parts
	// ends, so that a run stopped by a time limit keeps the lines of the parts it finished.
	checks := map[string]func(b backends.Backend, emit func(string)) error{
		"scan": func(b backends.Backend, _ func(string)) error { return bm.CheckScan(b) },
		"blocks": func(b backends.Backend, emit func(string)) error {
			lines, err := bm.CheckBlocks(b)
			for _, l := range lines {
				emit(l)
			}
			return err
		},
		"decode": bm.CheckDecodeEach,
	}
	var order []string
	for _, c := range strings.Split(*only, ",") {
		c = strings.TrimSpace(c)
		if checks[c] == nil {
			return fmt.Errorf("-checks %q: unknown check %q (want scan, blocks or decode)", *only, c)
		}
		if !slices.Contains(order, c) {
			order = append(order, c)
		}
	}
	if !*tf32 {
		// Full float32 matmuls: cuBLAS without TF32, and no Triton GEMMs (which use TF32 for
		// float32 dots). Must be set before the plugin loads.
		if _, ok := os.LookupEnv("NVIDIA_TF32_OVERRIDE"); !ok {
			_ = os.Setenv("NVIDIA_TF32_OVERRIDE", "0")
		}
		if flags := os.Getenv("XLA_FLAGS"); !strings.Contains(flags, "xla_gpu_enable_triton_gemm") {
			_ = os.Setenv("XLA_FLAGS", strings.TrimSpace(flags+" --xla_gpu_enable_triton_gemm=false"))
		}
	}
	backend, choice, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	fmt.Printf("backend: %s\n", choice)
	failed := 0
	check := func(name string, fn func(emit func(string)) error) {
		start := time.Now()
		err := fn(func(l string) { fmt.Printf("  %s\n", l) })
		status := "ok"
		if err != nil {
			status = "FAILED: " + err.Error()
			failed++
		}
		fmt.Printf("%-8s %-60s %6.1fs\n", name, status, time.Since(start).Seconds())
	}
	for _, c := range order {
		check(c, func(emit func(string)) error { return checks[c](backend, emit) })
	}
	if failed > 0 {
		return fmt.Errorf("%d self-checks failed", failed)
	}
	if len(order) == len(checks) {
		fmt.Println("all self-checks passed")
	} else {
		fmt.Printf("self-checks passed: %s\n", strings.Join(order, ", "))
	}
	return nil
}
