package bench

import (
	"fmt"
	"math/rand/v2"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
	"blackmamba/experiments"
	"blackmamba/experiments/train"
)

// TrainStep times full training steps (forward, backward, global-norm clipping and the AdamW
// update, in one compiled graph) of cfg at [batch, seqLen] on random tokens, and reports
// tokens/s and the model FLOPs utilisation against PeakBF16FLOPs.
func TrainStep(backend backends.Backend, cfg bm.Config, batch, seqLen, reps int) Row {
	return TrainStepDevices(backend, cfg, batch, seqLen, reps, 1, false, "")
}

// TrainStepDevices is TrainStep data-parallel on devices devices of the backend (see
// train.Config.Devices): batch is the global batch, split into batch/devices rows per device.
// Tokens/s counts the global batch; the MFU is per device (against devices × PeakBF16FLOPs).
// devices <= 1 is TrainStep on one device. shardExperts splits the experts' weights and their
// AdamW moments over the devices (train.Config.Sharded with bm.IsExpertWeight). alias is
// train.Config.Alias ("" for auto); the row's Extra "aliased" is 1 when the compiled step wrote
// its updated variables into their own buffers.
func TrainStepDevices(backend backends.Backend, cfg bm.Config, batch, seqLen, reps, devices int, shardExperts bool, alias string) Row {
	variant := fmt.Sprintf("%s %s routing=%s", cfg.Name, cfg.ComputeDType, cfg.Routing)
	shape := fmt.Sprintf("batch %d x %d", batch, seqLen)
	if devices > 1 {
		variant += fmt.Sprintf(" devices=%d", devices)
		if shardExperts {
			variant += " experts-sharded"
		}
		shape += fmt.Sprintf(" (%d per device)", batch/devices)
	}
	row := Row{Bench: "train-step", Variant: variant, Shape: shape, Reps: reps, PeakBytes: -1}
	_, trainPerToken := cfg.FLOPsPerToken(seqLen)
	tokensPerStep := float64(batch * seqLen)
	row.FLOPs = trainPerToken * tokensPerStep
	total, active := cfg.ParamCounts()
	row.Extra = map[string]float64{"params_total": float64(total), "params_active": float64(active)}
	if devices > 1 {
		row.Extra["devices"] = float64(devices)
		if shardExperts {
			row.Extra["experts_sharded"] = 1
		}
	}
	err := catch(func() error {
		m, err := bm.New(cfg)
		if err != nil {
			return err
		}
		ctx := context.New()
		opt := train.DefaultAdamW(1e-3, 1000)
		opt.NoDecay = experiments.NoDecay
		tcfg := train.Config{Batch: batch, SeqLen: seqLen, Optimizer: opt, Devices: devices, Alias: alias}
		if shardExperts {
			tcfg.Sharded = bm.IsExpertWeight
		}
		tr, err := train.New(backend, ctx, experiments.LossFn(m, bm.ForwardOptions{}), tcfg)
		if err != nil {
			return err
		}
		rng := rand.New(rand.NewPCG(3, 5))
		batches := make([][]int32, 4)
		for i := range batches {
			batches[i] = make([]int32, batch*(seqLen+1))
			for j := range batches[i] {
				batches[i][j] = int32(rng.IntN(cfg.VocabReal))
			}
		}
		k := 0
		var last train.StepResult
		call := func() error {
			r, err := tr.Step(batches[k%len(batches)])
			k++
			last = r
			return err
		}
		row.CompileS, row.Ms, row.MinMs, err = timeCalls(call, 2, reps)
		row.Extra["loss"] = last.Loss
		if tr.Aliased() {
			row.Extra["aliased"] = 1
		}
		return err
	})
	if err != nil {
		row.Err = err.Error()
		return row
	}
	row.TokensPerS = tokensPerStep / (row.Ms / 1000)
	row.MFU = row.FLOPs / (row.Ms / 1000) / (PeakBF16FLOPs * float64(max(1, devices)))
	traceRow(&row)
	return row
}
