package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"blackmamba/xla"
)

func init() {
	register(&command{
		name:    "backends",
		summary: "list the PJRT plugins found, the backend chosen and why, its devices and memory",
		run:     runBackends,
	})
}

// backendsReport is what "blackmamba backends -json" prints.
type backendsReport struct {
	Candidates     []xla.Candidate  `json:"candidates"`
	Searched       []string         `json:"searched"`
	Choice         *xla.Choice      `json:"choice,omitempty"`
	Description    *xla.Description `json:"description,omitempty"`
	XLAFlags       string           `json:"xla_flags,omitempty"`
	SelfCheckError float64          `json:"self_check_rel_error,omitempty"`
	SelfCheckTime  string           `json:"self_check_time,omitempty"`
	Error          string           `json:"error,omitempty"`
}

func runBackends(fs *flag.FlagSet, args []string) error {
	backendFlag := xla.AddFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	noLoad := fs.Bool("no-load", false, "only discover and choose; do not load the backend")
	check := fs.Bool("check", true, "compile and run a small graph on the backend and compare it with a float64 reference")
	printEnv := fs.Bool("env", false, "print, as shell assignments, the environment that selects the chosen backend "+
		"for any GoMLX program (GOMLX_BACKEND, XLA_FLAGS, ...), without loading it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	env := xla.SystemEnv()
	if *printEnv {
		ch, err := env.Choose(*backendFlag)
		if err != nil {
			return err
		}
		xla.PrepareProcessEnv(ch.Plugin)
		fmt.Printf("export %s=%s\n", xla.EnvBackend, shellQuote(ch.Config))
		for _, k := range []string{xla.NoAutoInstallEnv, "GOPJRT_CUDA_CHECKS", "XLA_FLAGS"} {
			if v, ok := os.LookupEnv(k); ok {
				fmt.Printf("export %s=%s\n", k, shellQuote(v))
			}
		}
		fmt.Printf("# %s\n", ch)
		return nil
	}
	rep := backendsReport{Candidates: env.Discover(), Searched: env.SearchedPlaces()}
	if rep.Candidates == nil {
		rep.Candidates = []xla.Candidate{}
	}

	err := func() error {
		if *noLoad {
			ch, err := env.Choose(*backendFlag)
			if err != nil {
				return err
			}
			rep.Choice = &ch
			return nil
		}
		b, ch, err := env.New(*backendFlag)
		rep.Choice = &ch
		if err != nil {
			return err
		}
		defer b.Finalize()
		rep.XLAFlags = os.Getenv("XLA_FLAGS")
		d := xla.Describe(b)
		rep.Description = &d
		if *check {
			start := time.Now()
			relErr, err := xla.SelfCheck(b)
			rep.SelfCheckError = relErr
			rep.SelfCheckTime = time.Since(start).Round(time.Millisecond).String()
			if err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		rep.Error = err.Error()
	}

	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if e := enc.Encode(rep); e != nil {
			return e
		}
		return err
	}
	fmt.Println("PJRT plugins found (best first):")
	if len(rep.Candidates) == 0 {
		fmt.Println("  none")
	}
	for i, c := range rep.Candidates {
		fmt.Printf("  %d. %s\n", i+1, c)
	}
	fmt.Println("searched:")
	for _, s := range rep.Searched {
		fmt.Printf("  %s\n", s)
	}
	if rep.Choice != nil && rep.Choice.Backend != "" {
		fmt.Printf("chosen: %s\n", rep.Choice)
		fmt.Printf("config: %s\n", rep.Choice.Config)
	}
	if rep.XLAFlags != "" {
		fmt.Printf("XLA_FLAGS: %s\n", rep.XLAFlags)
	}
	if rep.Description != nil {
		fmt.Print(rep.Description)
	}
	if rep.SelfCheckTime != "" && err == nil {
		fmt.Printf("self-check: ok, relative error %.2g against float64 (tolerance %.0g), %s including compilation\n",
			rep.SelfCheckError, xla.SelfCheckTolerance, rep.SelfCheckTime)
	}
	return err
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
