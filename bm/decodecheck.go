package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// DecodeCheckConfigs are small configurations of the four architectures (BlackMamba, dense
// Mamba, Transformer, Transformer-MoE): vocabulary 97 (90 real ids), d = 16, F = 32, N = 4,
// 2 heads, with larger weights and time steps than for training (init std 0.3, dt in
// [0.05, 1]) so that every block changes the logits and a wrong state shows well above the
// tolerance.
func DecodeCheckConfigs() []Config {
	mk := func(name, pattern string) Config {
		c := MustPreset("tiny")
		c.Name, c.Pattern = name, pattern
		c.Vocab, c.VocabReal = 97, 90
		c.Dim, c.FFN, c.StateSize, c.Heads = 16, 32, 4, 2
		c.DtRank = 3 // more than one term in the Δ projection
		c.MaxSeqLen = 64
		c.InitStd, c.DtMin, c.DtMax = 0.3, 0.05, 1
		return c
	}
	return []Config{mk("blackmamba", "r8r8"), mk("mamba", "r1r1"), mk("transformer", "a1a1"), mk("transformer-moe", "a8a8")}
}

// CheckDecode runs, on backend and for each of DecodeCheckConfigs, the parallel forward over
// random tokens [2, 10] and the recurrent decoder (prefill of 1, 2, 3, 5 and 8 tokens, then
// one step per token), and returns an error if any logit differs from the forward's by more
// than 1e-4 of the largest logit magnitude, with the norm gains set to random values
// (RandomizeNormGains). Each architecture is checked fifteen times: as it is, with its step
// products padded to 4 rows (Config.StepRows), with the steps reading the weights' transposed
// copies (TransposeStepWeights), with those copies carrying the norm gains (FoldStepWeights),
// and the last at batch 1 too, where the folded step takes its row products (plain, with
// Config.StepFuse "gate,residual", "router", "residual,router", "residual,ring",
// "residual,router,ring", "residual,router,ring,wide" and
// "residual,router,ring,align,dtrow,head" without and with "nodefer,wide"), and "ring" and
// "ring,head" at batch 2 as well. The router biases are set to random values too. It returns
// one report line per check.
func CheckDecode(backend backends.Backend) (report []string, err error) {
	err = CheckDecodeEach(backend, func(line string) { report = append(report, line) })
	return report, err
}

// CheckDecodeEach is CheckDecode, handing each report line to each as soon as its check is done
// (a time-limited run then keeps the lines of the checks it finished).
func CheckDecodeEach(backend backends.Backend, each func(line string)) error {
	for _, cfg := range DecodeCheckConfigs() {
		if err := CheckDecodeConfig(backend, cfg, each); err != nil {
			return err
		}
	}
	return nil
}

// CheckDecodeConfig is CheckDecodeEach for one architecture, cfg (one of DecodeCheckConfigs, or
// another small configuration): its fifteen variants, one report line each.
func CheckDecodeConfig(backend backends.Backend, cfg Config, each func(line string)) error {
	const T, tol = 10, 1e-4
	for _, variant := range []struct {
		rows, batch int
		layout      StepLayout
		fuse        string
	}{{0, 2, StepInOut, ""}, {4, 2, StepInOut, ""}, {0, 2, StepTransposed, ""}, {0, 2, StepFolded, ""},
		{0, 1, StepFolded, ""}, {0, 1, StepFolded, "gate,residual"}, {0, 1, StepFolded, "router"},
		{0, 1, StepFolded, "residual,router"}, {0, 2, StepFolded, "ring"}, {0, 1, StepFolded, "residual,ring"},
		{0, 1, StepFolded, "residual,router,ring"}, {0, 1, StepFolded, "residual,router,ring,wide"},
		{0, 1, StepFolded, "residual,router,ring,align,dtrow,head"}, {0, 1, StepFolded, "residual,router,ring,head,align,dtrow,nodefer,wide"}, {0, 2, StepFolded, "ring,head"}} {
		cfg.StepRows, cfg.StepFuse = variant.rows, variant.fuse
		name := cfg.Name
		if variant.rows > 0 {
			name = fmt.Sprintf("%s, step rows %d", cfg.Name, variant.rows)
		}
		if variant.layout != StepInOut {
			name += ", " + string(variant.layout)
		}
		if variant.batch == 1 {
			name += ", batch 1"
		}
		if variant.fuse != "" {
			name += ", " + variant.fuse
		}
		worst, err := checkDecodeArch(backend, cfg, variant.batch, T, variant.layout)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		each(fmt.Sprintf("decode %-44s prompts 1,2,3,5,8 of %d: max rel err %.2g (tol %.0e)", name, T, worst, tol))
		if worst > tol {
			return fmt.Errorf("%s: decoder vs forward max relative error %.3g > %g", name, worst, tol)
		}
	}
	return nil
}

// RandomizeNormGains sets every norm gain of ctx (a variable "weight" in a scope ending in
// "/norm" or "_layernorm") to values drawn uniformly from [0.5, 1.5) with the given seed, so that
// checks see gains other than their initial 1 (FoldStepWeights folds them into copies).
func RandomizeNormGains(ctx *context.Context, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for v := range ctx.IterVariables() {
		if v.Name() != "weight" || !(strings.HasSuffix(v.Scope(), "/norm") || strings.HasSuffix(v.Scope(), "_layernorm")) {
			continue
		}
		if v.Shape().DType != dtypes.Float32 || v.Shape().Rank() != 1 {
			return fmt.Errorf("bm.RandomizeNormGains: %s is %s, want a float32 vector", v.ScopeAndName(), v.Shape())
		}
		vals := make([]float32, v.Shape().Size())
		for i := range vals {
			vals[i] = 0.5 + rng.Float32()
		}
		if err := v.SetValue(tensors.FromFlatDataAndDimensions(vals, v.Shape().Dimensions...)); err != nil {
			return fmt.Errorf("bm.RandomizeNormGains: %s: %w", v.ScopeAndName(), err)
		}
	}
	return nil
}

func checkDecodeArch(backend backends.Backend, cfg Config, B, T int, layout StepLayout) (worst float64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	m, err := New(cfg)
	if err != nil {
		return 0, err
	}
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(11))
	// Norm gains other than 1, which the transposed variant folds into its copies.
	if err := InitWeights(backend, ctx, cfg); err != nil {
		return 0, err
	}
	if err := RandomizeNormGains(ctx, 7); err != nil {
		return 0, err
	}
	rng := rand.New(rand.NewPCG(5, 5))
	// Router biases other than their initial 0, which the "router" step adds after scaling.
	for v := range ctx.IterVariables() {
		if v.Name() == "router_bias" {
			vals := make([]float32, v.Shape().Size())
			for i := range vals {
				vals[i] = float32(rng.NormFloat64() * 0.1)
			}
			if err := v.SetValue(tensors.FromFlatDataAndDimensions(vals, v.Shape().Dimensions...)); err != nil {
				return 0, fmt.Errorf("router bias %s: %w", v.ScopeAndName(), err)
			}
		}
	}
	ids := make([][]int, B)
	flat := make([]int32, 0, B*T)
	for b := range ids {
		for range T {
			id := rng.IntN(cfg.Vocab)
			ids[b] = append(ids[b], id)
			flat = append(flat, int32(id))
		}
	}
	fullT := context.MustExecOnce(backend, ctx.Reuse(), func(ctx *context.Context, tok *Node) *Node {
		return m.Forward(ctx, tok, ForwardOptions{}).Logits
	}, tensors.FromFlatDataAndDimensions(flat, B, T))
	full := tensors.MustCopyFlatData[float32](fullT)
	if layout != StepInOut {
		if n, err := SetStepLayout(backend, ctx, layout); err != nil || n == 0 {
			return 0, fmt.Errorf("step weights %s: %d copies, error %v", layout, n, err)
		}
	}
	V := cfg.Vocab
	dec, err := NewDecoder(backend, ctx, cfg, B, T)
	if err != nil {
		return 0, err
	}
	for _, P := range []int{1, 2, 3, 5, 8} {
		prompts := make([][]int, B)
		for b := range prompts {
			prompts[b] = ids[b][:P]
		}
		logits, err := dec.Prefill(prompts)
		if err != nil {
			return 0, err
		}
		var scale, maxDiff float64
		for t := P - 1; t < T; t++ {
			if t >= P {
				col := make([]int, B)
				for b := range col {
					col[b] = ids[b][t]
				}
				if logits, err = dec.Step(col); err != nil {
					return 0, err
				}
			}
			got := tensors.MustCopyFlatData[float32](logits)
			for b := range B {
				want := full[(b*T+t)*V : (b*T+t+1)*V]
				for j, w := range want {
					scale = math.Max(scale, math.Abs(float64(w)))
					maxDiff = math.Max(maxDiff, math.Abs(float64(got[b*V+j]-w)))
				}
			}
		}
		worst = math.Max(worst, maxDiff/math.Max(scale, 1e-30))
	}
	return worst, nil
}
