package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

// experiments maps "blackmamba experiment <name>" to its driver. Each driver lives in its own
// exp_<name>.go file and registers itself in init.
var experimentDrivers = map[string]*command{}

func registerExperiment(c *command) { experimentDrivers[c.name] = c }

func init() {
	register(&command{
		name:    "experiment",
		summary: "run one of the paper's experiments: " + "training, balance, latency",
		run:     runExperiment,
	})
}

func runExperiment(fs *flag.FlagSet, args []string) error {
	var names []string
	for n := range experimentDrivers {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(os.Stderr, "Usage: blackmamba experiment <%s> [flags]\n", strings.Join(names, "|"))
		if len(args) == 0 {
			return fmt.Errorf("which experiment? (%s)", strings.Join(names, ", "))
		}
		return flag.ErrHelp
	}
	c, ok := experimentDrivers[args[0]]
	if !ok {
		return fmt.Errorf("unknown experiment %q (known: %s)", args[0], strings.Join(names, ", "))
	}
	sub := flag.NewFlagSet("blackmamba experiment "+c.name, flag.ContinueOnError)
	sub.Usage = func() {
		fmt.Fprintf(sub.Output(), "Usage: blackmamba experiment %s [flags]\n\n%s\n\nFlags:\n", c.name, c.summary)
		sub.PrintDefaults()
	}
	return c.run(sub, args[1:])
}
