package main

import (
	"flag"
	"fmt"
	"time"

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
	if err := fs.Parse(args); err != nil {
		return err
	}
	backend, choice, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	fmt.Printf("backend: %s\n", choice)
	failed := 0
	check := func(name string, fn func() ([]string, error)) {
		start := time.Now()
		lines, err := fn()
		for _, l := range lines {
			fmt.Printf("  %s\n", l)
		}
		status := "ok"
		if err != nil {
			status = "FAILED: " + err.Error()
			failed++
		}
		fmt.Printf("%-8s %-60s %6.1fs\n", name, status, time.Since(start).Seconds())
	}
	check("scan", func() ([]string, error) { return nil, bm.CheckScan(backend) })
	check("blocks", func() ([]string, error) { return bm.CheckBlocks(backend) })
	check("decode", func() ([]string, error) { return bm.CheckDecode(backend) })
	if failed > 0 {
		return fmt.Errorf("%d self-checks failed", failed)
	}
	fmt.Println("all self-checks passed")
	return nil
}
