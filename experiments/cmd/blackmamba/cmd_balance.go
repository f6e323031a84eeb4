package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"blackmamba/bm"
	"blackmamba/bm/data"
	"blackmamba/bm/weights"
	"blackmamba/experiments/balance"
	"blackmamba/experiments/train"
	"blackmamba/xla"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

func init() {
	register(&command{
		name:    "balance",
		summary: "tokens per expert of a trained model's MoE blocks on held-out text (argmax and training routing), with plots",
		run:     runBalance,
	})
}

// heldOutBatches adapts a held-out data.Loader to train.Batches (state as JSON) and tells its
// window length.
type heldOutBatches struct{ l *data.Loader }

func (b heldOutBatches) Next() ([]int32, error) { return b.l.Next() }
func (b heldOutBatches) SeqLen() int            { return b.l.SeqLen() }
func (b heldOutBatches) State() []byte {
	s, _ := json.Marshal(b.l.State()) // LoaderState holds only strings and numbers
	return s
}
func (b heldOutBatches) Restore(s []byte) error {
	var st data.LoaderState
	if err := json.Unmarshal(s, &st); err != nil {
		return fmt.Errorf("held-out loader state: %w", err)
	}
	return b.l.Restore(st)
}

// loadModel reads a model directory, a safetensors checkpoint (exported model or training
// checkpoint; optimizer state is skipped) or a released torch archive into a fresh context.
// configOverride (a preset name or a config JSON path), when set, replaces the stored config.
func loadModel(path, configOverride string) (bm.Config, *context.Context, error) {
	cfg, ts, err := weights.LoadAny(path, weights.ImportOptions{DType: dtypes.Float32})
	if err != nil && configOverride == "" {
		return cfg, nil, fmt.Errorf("%w (a training checkpoint without its config: pass -config)", err)
	}
	if configOverride != "" {
		if cfg, err = bm.LoadConfig(configOverride); err != nil {
			return cfg, nil, fmt.Errorf("-config: %w", err)
		}
		if ts == nil {
			if ts, _, err = train.LoadCheckpoint(path); err != nil {
				return cfg, nil, err
			}
		}
	}
	model := map[string]*tensors.Tensor{}
	for n, t := range ts {
		if strings.HasPrefix(n, train.OptimizerScope+"/") {
			t.FinalizeAll()
			continue
		}
		model[n] = t
	}
	ctx := context.New()
	if err := weights.IntoContext(ctx, model, weights.IntoOptions{DType: dtypes.Float32}); err != nil {
		return cfg, nil, fmt.Errorf("loading %s: %w", path, err)
	}
	return cfg, ctx, nil
}

func runBalance(fs *flag.FlagSet, args []string) error {
	backendFlag := xla.AddFlag(fs)
	modelPath := fs.String("model", "", "model directory, exported .safetensors, training checkpoint, or released pytorch_model.bin (required)")
	configFlag := fs.String("config", "", "config preset name or JSON file, overriding the one stored with the model (needed for training checkpoints without one)")
	corpus := fs.String("corpus", "", "corpus directory built by \"blackmamba data build\" (required)")
	nBatches := fs.Int("batches", 8, "held-out batches per domain")
	batch := fs.Int("batch", 8, "sequences per batch")
	seqLen := fs.Int("seq", 0, "tokens per sequence (default: the config's max_seq_len)")
	out := fs.String("out", "balance.json", "JSON results file (empty: none)")
	plotDir := fs.String("plots", "", "directory for the figures, PNG and SVG (empty: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *modelPath == "" || *corpus == "" {
		return fmt.Errorf("-model and -corpus are required")
	}
	if *nBatches < 1 || *batch < 1 || *seqLen < 0 {
		return fmt.Errorf("-batches %d and -batch %d must be >= 1 and -seq %d >= 0", *nBatches, *batch, *seqLen)
	}
	cfg, ctx, err := loadModel(*modelPath, *configFlag)
	if err != nil {
		return err
	}
	T := *seqLen
	if T == 0 {
		T = cfg.MaxSeqLen
	}
	c, err := data.Open(*corpus)
	if err != nil {
		return err
	}
	heldOut := map[string]train.Batches{}
	for _, d := range c.Domains() {
		heldOut[d] = heldOutBatches{c.HeldOut(d, T, *batch)}
	}
	backend, _, err := xla.New(*backendFlag)
	if err != nil {
		return err
	}
	rs, err := balance.Analyze(backend, ctx, cfg, heldOut, *nBatches)
	if err != nil {
		return err
	}
	printBalance(rs)
	if *out != "" {
		if err := balance.WriteJSON(*out, rs); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", *out)
	}
	if *plotDir != "" {
		if err := os.MkdirAll(*plotDir, 0o755); err != nil {
			return err
		}
		if err := balance.PlotAll(rs, nil, *plotDir); err != nil {
			return err
		}
		fmt.Printf("wrote figures to %s\n", *plotDir)
	}
	return nil
}

// printBalance prints one table per routing mode for the sum over domains, and the mean CV of
// each domain.
func printBalance(rs []balance.Result) {
	for _, r := range rs {
		if r.Domain != balance.DomainAll {
			continue
		}
		fmt.Printf("\n%s, %s routing (trained with %s), %d held-out tokens:\n", r.Model, r.Mode, r.Routing, r.Tokens)
		fmt.Printf("%6s %10s %10s %7s %9s %9s %11s\n", "layer", "max share", "min share", "CV", "entropy", "norm ent", "under half")
		for _, l := range r.Layers {
			fmt.Printf("%6d %10.4f %10.4f %7.3f %9.4f %9.4f %11.3f\n", l.Layer, l.MaxShare, l.MinShare, l.CV, l.Entropy, l.NormEntropy, l.UnderHalf)
		}
	}
	fmt.Printf("\nmean CV over layers per domain:\n")
	for _, r := range rs {
		fmt.Printf("  %-20s %-18s %.3f\n", r.Domain, r.Mode, r.MeanCV())
	}
}
