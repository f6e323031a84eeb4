// Command blackmamba defines, trains, evaluates and runs BlackMamba models and their baselines.
//
// Usage:
//
//	blackmamba <command> [flags]
//
// Run "blackmamba help" for the list of commands and "blackmamba <command> -h" for the flags of one.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

// command is one subcommand. Each lives in its own cmd_<name>.go file and registers itself in init.
type command struct {
	name    string
	summary string
	// run parses args with the given FlagSet (already named and with usage set) and runs.
	run func(fs *flag.FlagSet, args []string) error
}

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("blackmamba: duplicate command " + c.name)
	}
	commands[c.name] = c
}

func usage() {
	fmt.Fprintf(os.Stderr, "blackmamba: BlackMamba (Mamba + mixture-of-experts) in Go on XLA.\n\nUsage:\n  blackmamba <command> [flags]\n\nCommands:\n")
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun \"blackmamba <command> -h\" for the flags of a command.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "help" || os.Args[1] == "-h" || os.Args[1] == "--help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	name := os.Args[1]
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "blackmamba: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	fs := flag.NewFlagSet("blackmamba "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: blackmamba %s [flags]\n\n%s\n\nFlags:\n", name, c.summary)
		fs.PrintDefaults()
	}
	err := c.run(fs, os.Args[2:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "blackmamba") {
			msg = "blackmamba " + name + ": " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(1)
	}
}
