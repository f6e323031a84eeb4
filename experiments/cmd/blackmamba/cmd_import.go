package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"blackmamba/bm/weights"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
)

func init() {
	register(&command{
		name:    "import",
		summary: "convert a released BlackMamba checkpoint (config.json + pytorch_model.bin) into a project checkpoint",
		run:     runImport,
	})
}

// runImport reads a released model and writes DIR/config.json (the bm.Config) and
// DIR/model.safetensors (tensors under bm's variable paths, config in the metadata). Tensors are
// converted and written one at a time, so the 2.8B model needs about one expert layer of memory
// beyond the archive's page cache.
//
// Generation does not need this step: weights.LoadAny (and so any command taking a weights
// path) also reads pytorch_model.bin directly, importing it in memory with the config.json
// beside it.
func runImport(fs *flag.FlagSet, args []string) error {
	cfgPath := fs.String("config", "", "released config.json (default: config.json beside -weights)")
	weightsPath := fs.String("weights", "", "released torch.save archive (pytorch_model.bin)")
	out := fs.String("out", "", "output directory for config.json and model.safetensors")
	dtype := fs.String("dtype", "bfloat16", "dtype of the written tensors: bfloat16 (as released, lossless) or float32")
	activation := fs.String("activation", "silu", "expert activation to record in the config: silu (the paper's SwiGLU) or gelu (the released inference code)")
	writeST := fs.Bool("safetensors", true, "write model.safetensors; with -safetensors=false only check the archive (every name, shape and CRC) and write config.json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *weightsPath == "" || *out == "" {
		fs.Usage()
		return fmt.Errorf("-weights and -out are required")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	var dt dtypes.DType
	switch *dtype {
	case "bfloat16", "bf16":
		dt = dtypes.BFloat16
	case "float32", "f32":
		dt = dtypes.Float32
	default:
		return fmt.Errorf("-dtype %q: want bfloat16 or float32", *dtype)
	}
	if *cfgPath == "" {
		*cfgPath = filepath.Join(filepath.Dir(*weightsPath), weights.ConfigFile)
	}
	cfg, err := weights.ReadConfig(*cfgPath)
	if err != nil {
		return err
	}
	switch *activation {
	case "silu", "gelu":
		cfg.Activation = *activation
	default:
		return fmt.Errorf("-activation %q: want silu or gelu", *activation)
	}
	start := time.Now()
	a, err := weights.ReadTorch(*weightsPath)
	if err != nil {
		return err
	}
	defer a.Close()
	im, err := weights.PlanBlackMamba(a, cfg, weights.ImportOptions{DType: dt})
	if err != nil {
		return err
	}
	total, active := cfg.ParamCounts()
	fmt.Printf("config %s: pattern %s, d=%d, F=%d, vocab %d: %d parameters (%d active per token)\n",
		cfg.Name, cfg.Pattern, cfg.Dim, cfg.FFN, cfg.Vocab, total, active)
	fmt.Printf("archive %s: %d tensors map onto %d variables\n", *weightsPath, len(a.Names()), len(im.Names()))

	meta := map[string]string{weights.MetaSource: filepath.Base(*weightsPath)}
	if *writeST {
		if err := weights.SaveModel(*out, cfg, im.Specs(), meta); err != nil {
			return err
		}
		fmt.Printf("wrote %s and %s in %s\n", filepath.Join(*out, weights.ConfigFile),
			filepath.Join(*out, weights.CheckpointFile), time.Since(start).Round(time.Millisecond))
		return nil
	}
	for _, n := range im.Names() {
		t, err := im.Tensor(n)
		if err != nil {
			return err
		}
		t.FinalizeAll()
	}
	if err := weights.WriteConfig(*out, cfg); err != nil {
		return err
	}
	fmt.Printf("checked every tensor of %s; wrote %s (load the weights straight from the archive)\n",
		*weightsPath, filepath.Join(*out, weights.ConfigFile))
	return nil
}
