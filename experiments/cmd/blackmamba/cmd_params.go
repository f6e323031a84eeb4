package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"blackmamba/bm"
)

func init() {
	register(&command{
		name:    "params",
		summary: "print total and active parameters and FLOPs per token of a config",
		run:     runParams,
	})
}

func runParams(fs *flag.FlagSet, args []string) error {
	cfgName := fs.String("config", "tiny", "preset name or path of a JSON config")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	list := fs.Bool("list", false, "list the presets")
	seqLen := fs.Int("seq", 0, "sequence length for the FLOPs of attention blocks (0: the config's max_seq_len)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *list {
		for _, n := range bm.PresetNames() {
			c := bm.MustPreset(n)
			t, a := c.ParamCounts()
			fwd, _ := c.FLOPsPerToken(c.MaxSeqLen)
			fmt.Printf("%-22s blocks=%-4d d=%-5d total=%-14d active=%-12d fwd GFLOP/token=%.4f\n", n, len(c.Blocks()), c.Dim, t, a, fwd/1e9)
		}
		return nil
	}
	cfg, err := bm.LoadConfig(*cfgName)
	if err != nil {
		return err
	}
	total, active := cfg.ParamCounts()
	if *seqLen <= 0 {
		*seqLen = cfg.MaxSeqLen
	}
	fwd, train := cfg.FLOPsPerToken(*seqLen)
	out := map[string]any{"config": cfg.Name, "pattern": cfg.Pattern, "blocks": len(cfg.Blocks()),
		"total_params": total, "active_params": active, "seq_len": *seqLen,
		"forward_flops_per_token": fwd, "training_flops_per_token": train}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Printf("config          %s\npattern         %s\nblocks          %d\ntotal params    %d\nactive params   %d\n",
		cfg.Name, cfg.Pattern, len(cfg.Blocks()), total, active)
	fmt.Printf("FLOPs/token     %.4g forward, %.4g training (forward+backward), at sequence length %d\n",
		fwd, train, *seqLen)
	return nil
}
