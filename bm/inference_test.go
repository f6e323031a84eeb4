package bm

import (
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"
)

// TestCastWeights checks, for the four architectures with bfloat16 compute, that storing the
// matmul weights in bfloat16 (CastWeights) leaves the logits exactly as they were with float32
// master weights (the matmul operands were bf16 already), that exactly the block matmul weights
// were converted and the head's copy added, and that greedy decoding runs on the cast weights.
func TestCastWeights(t *testing.T) {
	backend := cpuBackend(t)
	for _, cfg := range DecodeCheckConfigs() {
		t.Run(cfg.Name, func(t *testing.T) {
			cfg.ComputeDType = "bfloat16"
			m, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.New()
			ctx.SetParam(initializers.ParamInitialSeed, int64(3))
			if err := InitWeights(backend, ctx, cfg); err != nil {
				t.Fatal(err)
			}
			const T = 7
			ids := make([]int32, T)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range ids {
				ids[i] = int32(rng.IntN(cfg.VocabReal))
			}
			forward := func() []float32 {
				out := context.MustExecOnce(backend, ctx.Reuse(), func(ctx *context.Context, tok *Node) *Node {
					return m.Forward(ctx, tok, ForwardOptions{}).Logits
				}, tensors.FromFlatDataAndDimensions(ids, 1, T))
				return tensors.MustCopyFlatData[float32](out)
			}
			before := forward()
			n, err := CastWeights(backend, ctx, dtypes.BFloat16)
			if err != nil {
				t.Fatal(err)
			}
			want := 1 // the head's copy of the embedding
			for v := range ctx.IterVariables() {
				if v.Name() == headCopyName {
					continue
				}
				if IsCastWeight(v.Scope(), v.Name()) {
					want++
					if v.Shape().DType != dtypes.BFloat16 {
						t.Errorf("%s is %s after CastWeights", v.ScopeAndName(), v.Shape().DType)
					}
				} else if v.Shape().DType == dtypes.BFloat16 {
					t.Errorf("%s should have stayed float32", v.ScopeAndName())
				}
			}
			if n != want || n == 0 {
				t.Errorf("CastWeights converted %d variables, want %d (> 0)", n, want)
			}
			after := forward()
			got, ref := make([]float64, len(after)), make([]float64, len(before))
			for i := range after {
				got[i], ref[i] = float64(after[i]), float64(before[i])
			}
			if e := maxRelErr(got, ref); e != 0 {
				t.Errorf("logits with bf16 weights differ by %.3g of the largest logit (want identical)", e)
			}
			dec, err := NewDecoder(backend, ctx, cfg, 1, T+1)
			if err != nil {
				t.Fatal(err)
			}
			toks, err := NewGreedyDecoder(dec).GenerateGreedy([]int{int(ids[0])}, 3)
			if err != nil {
				t.Fatal(err)
			}
			if len(toks) != 3 {
				t.Fatalf("generated %d tokens, want 3", len(toks))
			}
		})
	}
}

// TestInitWeightsMatchesFirstForward checks that InitWeights, which only builds the forward
// graph and runs the initialisers, gives every variable (the RNG state included) exactly the
// value a first forward call through context.Exec draws with the same seed, for the four
// architectures, with the initialisers in one graph and in groups of 1, 3 and
// DefaultInitBlocks blocks (ParamInitBlocks).
func TestInitWeightsMatchesFirstForward(t *testing.T) {
	backend := cpuBackend(t)
	for _, cfg := range DecodeCheckConfigs() {
		for _, group := range []int{0, 1, 3, DefaultInitBlocks} {
			testInitWeightsGroup(t, backend, cfg, group)
		}
	}
}

// testInitWeightsGroup is TestInitWeightsMatchesFirstForward for one config and group size.
func testInitWeightsGroup(t *testing.T, backend backends.Backend, cfg Config, group int) {
	t.Helper()
	a := context.New()
	a.SetParam(initializers.ParamInitialSeed, int64(3))
	a.SetParam(ParamInitBlocks, group)
	if err := InitWeights(backend, a, cfg); err != nil {
		t.Fatal(err)
	}
	b := context.New()
	b.SetParam(initializers.ParamInitialSeed, int64(3))
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	context.MustExecOnce(backend, b, func(ctx *context.Context, tokens *Node) *Node {
		return ReduceAllSum(m.Forward(ctx, tokens, ForwardOptions{}).Logits)
	}, tensors.FromFlatDataAndDimensions([]int32{0}, 1, 1))
	n := 0
	for v := range b.IterVariables() {
		w := a.InspectVariableIfLoaded(v.Scope(), v.Name())
		if w == nil {
			t.Fatalf("%s: InitWeights did not create %s", cfg.Name, v.ScopeAndName())
		}
		if !w.MustValue().Equal(v.MustValue()) {
			t.Errorf("%s, groups of %d blocks: %s differs from the first forward's", cfg.Name, group, v.ScopeAndName())
		}
		n++
	}
	if n < 10 {
		t.Errorf("%s: only %d variables compared", cfg.Name, n)
	}
}

// TestIsExpertWeight checks the variables expert parallelism splits: for each check config,
// exactly two per MoE block (fc1 and fc2), each with the block's expert count as first axis, and
// none of a model without MoE blocks.
func TestIsExpertWeight(t *testing.T) {
	backend := cpuBackend(t)
	for _, cfg := range DecodeCheckConfigs() {
		ctx := context.New()
		if err := InitWeights(backend, ctx, cfg); err != nil {
			t.Fatal(err)
		}
		moe, experts := 0, 0
		for _, b := range cfg.Blocks() {
			if b.Kind == KindMoE {
				moe++
				experts = b.Experts
			}
		}
		n := 0
		for v := range ctx.IterVariables() {
			if IsExpertWeight(v) {
				n++
				if v.Shape().Dim(0) != experts {
					t.Errorf("%s: %s %s: first axis is not the %d experts", cfg.Name, v.ScopeAndName(), v.Shape(), experts)
				}
			}
		}
		if n != 2*moe {
			t.Errorf("%s: %d expert weights selected, want 2 per MoE block (%d blocks)", cfg.Name, n, moe)
		}
	}
}
