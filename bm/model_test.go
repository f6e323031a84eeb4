package bm

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// TestParamCountsPublished checks ParamCounts against the released models (SPEC.md §4).
func TestParamCountsPublished(t *testing.T) {
	for _, c := range []struct {
		preset        string
		total, active int64
	}{
		{"1.5b", 1_458_462_072, 343_694_712},
		{"2.8b", 2_783_213_584, 628_770_832},
	} {
		total, active := MustPreset(c.preset).ParamCounts()
		if total != c.total || active != c.active {
			t.Errorf("%s: ParamCounts = %d total, %d active; want %d, %d", c.preset, total, active, c.total, c.active)
		}
	}
}

// TestParamCountsBuilt builds each architecture and compares the number of values in the
// context's variables with cfg.ParamCounts (exactly), and the released-checkpoint scope names.
func TestParamCountsBuilt(t *testing.T) {
	backend := cpuBackend(t)
	for _, cfg := range archTestConfigs {
		t.Run(cfg.Name, func(t *testing.T) {
			m, _ := New(cfg)
			ctx := context.New()
			tok := tensors.FromFlatDataAndDimensions([]int32{1, 2, 3}, 1, 3)
			context.MustExecOnce(backend, ctx, func(ctx *context.Context, tok *Node) *Node {
				return m.Forward(ctx, tok, ForwardOptions{}).Logits
			}, tok)
			total, _ := cfg.ParamCounts()
			got := int64(ctx.NumParameters())
			for v := range ctx.IterVariables() {
				if strings.HasPrefix(v.Name(), "#") { // the context's random state, not a parameter
					got -= int64(v.Shape().Size())
				}
			}
			if got != total {
				for v := range ctx.IterVariables() {
					t.Logf("%s/%s %s", v.Scope(), v.Name(), v.Shape())
				}
				t.Fatalf("built model has %d parameters, ParamCounts says %d", got, total)
			}
			for _, want := range [][2]string{
				{"/embedding/word_embeddings", "weight"},
				{"/decoder/layers/0/norm", "weight"},
				{"/decoder/final_layernorm", "weight"},
				{"/decoder/final_layernorm", "bias"},
			} {
				if ctx.InspectVariable(want[0], want[1]) == nil {
					t.Errorf("variable %s/%s missing", want[0], want[1])
				}
			}
			if cfg.Blocks()[0].Kind == KindMamba {
				for _, n := range mambaVarNames {
					if ctx.InspectVariable("/decoder/layers/0/mixer", n) == nil {
						t.Errorf("Mamba variable /decoder/layers/0/mixer/%s missing", n)
					}
				}
			}
		})
	}
}

// TestMambaInit checks the deterministic parts of the Mamba initialisation and the range of
// dt = softplus(dt_proj_bias).
func TestMambaInit(t *testing.T) {
	backend := cpuBackend(t)
	cfg := mambaTestConfig()
	cfg.DtMin, cfg.DtMax = 0.001, 0.1
	cfg.Dim = 64 // D = 128 draws of dt
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(1))
	u := tensors.FromFlatDataAndDimensions(make([]float32, cfg.Dim), 1, 1, cfg.Dim)
	context.MustExecOnce(backend, ctx, func(ctx *context.Context, u *Node) *Node { return Mamba(ctx.In("m"), cfg, u) }, u)
	w := varValues(ctx, "/m", mambaVarNames...)
	N := cfg.StateSize
	for i, v := range w["A_log"] {
		if want := math.Log(float64(i%N + 1)); math.Abs(v-want) > 1e-6 {
			t.Fatalf("A_log[%d] = %g, want ln(%d) = %g", i, v, i%N+1, want)
		}
	}
	for i, v := range w["D"] {
		if v != 1 {
			t.Fatalf("D[%d] = %g, want 1", i, v)
		}
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, b := range w["dt_proj_bias"] {
		dt := softplusRef(b)
		lo, hi = min(lo, dt), max(hi, dt)
	}
	if lo < 0.001*(1-1e-4) || hi > 0.1*(1+1e-4) || hi/lo < 10 {
		t.Errorf("softplus(dt_proj_bias) spans [%g, %g]; want inside [0.001, 0.1] and spread over it", lo, hi)
	}
	bound := 1 / math.Sqrt(float64(cfg.Rank()))
	for _, v := range w["dt_proj"] {
		if math.Abs(v) > bound {
			t.Fatalf("dt_proj value %g outside ±R^-1/2 = ±%g", v, bound)
		}
	}
}

// TestNoWeightDecay checks the variables excluded from weight decay.
func TestNoWeightDecay(t *testing.T) {
	for _, c := range []struct {
		scope, name string
		want        bool
	}{
		{"/decoder/layers/0/mixer", "A_log", true},
		{"/decoder/layers/0/mixer", "D", true},
		{"/decoder/layers/0/mixer", "conv1d_bias", true},
		{"/decoder/layers/0/mixer", "dt_proj_bias", true},
		{"/decoder/layers/1/mixer", "router_bias", true},
		{"/decoder/layers/3/norm", "weight", true},
		{"/decoder/final_layernorm", "weight", true},
		{"/decoder/final_layernorm", "bias", true},
		{"/decoder/layers/0/mixer", "in_proj", false},
		{"/decoder/layers/0/mixer", "dt_proj", false},
		{"/decoder/layers/1/mixer", "fc1", false},
		{"/embedding/word_embeddings", "weight", false},
	} {
		if got := NoWeightDecay(c.scope, c.name); got != c.want {
			t.Errorf("NoWeightDecay(%q, %q) = %v, want %v", c.scope, c.name, got, c.want)
		}
	}
}

// TestCrossEntropy compares CrossEntropy with a float64 reference that drops the padding ids.
func TestCrossEntropy(t *testing.T) {
	backend := cpuBackend(t)
	const M, V, real = 6, 11, 8
	rng := rand.New(rand.NewPCG(4, 4))
	logits := RandomTensor(rng, 3, 2, 3, V)
	targets := make([]int32, M)
	for i := range targets {
		targets[i] = int32(rng.IntN(real))
	}
	got := tensors.ToScalar[float32](MustExecOnce(backend, func(l, t *Node) *Node { return CrossEntropy(l, t, real) },
		logits, tensors.FromFlatDataAndDimensions(targets, 2, 3)))
	l := flat64(logits)
	var want float64
	for i := 0; i < M; i++ {
		var s float64
		for v := 0; v < real; v++ {
			s += math.Exp(l[i*V+v])
		}
		want += math.Log(s) - l[i*V+int(targets[i])]
	}
	want /= M
	if math.Abs(float64(got)-want) > 1e-5*math.Abs(want) {
		t.Errorf("CrossEntropy = %g, want %g", got, want)
	}
}

// TestValidate checks that invalid configurations are rejected with an error naming the field.
func TestValidate(t *testing.T) {
	ok := archTestConfigs[0]
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	for _, c := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"empty pattern", func(c *Config) { c.Pattern = "" }, "pattern"},
		{"bad block", func(c *Config) { c.Pattern = "rx" }, "pattern"},
		{"one expert", func(c *Config) { c.Pattern = "r,1x" }, "pattern"},
		{"zero width", func(c *Config) { c.Dim = 0 }, "d_model"},
		{"vocab real above vocab", func(c *Config) { c.VocabReal = c.Vocab + 1 }, "vocab_real"},
		{"zero state", func(c *Config) { c.StateSize = 0 }, "state_size"},
		{"dt range", func(c *Config) { c.DtMin, c.DtMax = 0.1, 0.01 }, "dt_min"},
		{"no ffn", func(c *Config) { c.FFN = 0 }, "ffn_hidden"},
		{"heads not dividing", func(c *Config) { c.Pattern = "a1"; c.Heads = 3 }, "heads"},
		{"odd head width", func(c *Config) { c.Pattern = "a1"; c.Heads = 16 }, "head width"},
		{"activation", func(c *Config) { c.Activation = "relu" }, "activation"},
		{"routing", func(c *Config) { c.Routing = "random" }, "routing"},
		{"norm eps", func(c *Config) { c.NormEps = 0 }, "norm_eps"},
		{"compute dtype", func(c *Config) { c.ComputeDType = "float16" }, "compute_dtype"},
		{"scan chunk", func(c *Config) { c.ScanChunk = -1 }, "scan_chunk"},
		{"max seq len", func(c *Config) { c.MaxSeqLen = 0 }, "max_seq_len"},
		{"step fusion", func(c *Config) { c.StepFuse = "gate,norm" }, "step_fuse"},
	} {
		cfg := ok
		c.mutate(&cfg)
		err := cfg.Validate()
		if err == nil {
			t.Errorf("%s: Validate accepted %+v", c.name, cfg)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not name %q", c.name, err, c.want)
		}
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted the config", c.name)
		}
	}
}

// TestComputeBFloat16 runs the same weights with ComputeDType "bfloat16" and "float32": the
// logits must differ (bf16 matmul operands are really used) by less than 3% of the largest
// logit, and stay float32.
func TestComputeBFloat16(t *testing.T) {
	backend := cpuBackend(t)
	cfg := archTestConfigs[0]
	cfg.InitStd, cfg.DtMin, cfg.DtMax = 0.02, 0.001, 0.1 // the training initialisation
	ctx := context.New()
	ctx.SetParam(initializers.ParamInitialSeed, int64(4))
	ids := tokensTensor(randomTokens(rand.New(rand.NewPCG(6, 6)), 2, 12, cfg.Vocab))
	run := func(c Config) *tensors.Tensor {
		m, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		return context.MustExecOnce(backend, ctx.Checked(false), func(ctx *context.Context, tok *Node) *Node {
			return m.Forward(ctx, tok, ForwardOptions{}).Logits
		}, ids)
	}
	f32 := run(cfg)
	cfg.ComputeDType = "bfloat16"
	bf := run(cfg)
	if bf.DType() != f32.DType() {
		t.Fatalf("bf16 logits dtype %s, want float32", bf.DType())
	}
	e := maxRelErr(flat64(bf), flat64(f32))
	t.Logf("bf16 vs f32 logits: max relative error %.3g", e)
	if e == 0 || e > 0.03 {
		t.Errorf("bf16 vs f32 logits: max relative error %.3g, want in (0, 0.03]", e)
	}
}
