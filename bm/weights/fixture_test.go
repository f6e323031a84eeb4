package weights

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
	"blackmamba/xla"
)

// refLogits is a reference file written by fixture/make_fixture.py.
type refLogits struct {
	Activation string           `json:"activation"`
	Tokens     []int32          `json:"tokens"`
	Routes     map[string][]int `json:"routes"`
	Logits     [][]float64      `json:"logits"`
	MinMargin  float64          `json:"min_router_margin"`
}

// TestImportFixture imports a small BlackMamba saved by PyTorch in the released format
// (testdata/fixture, made by fixture/make_fixture.py) and checks the logits of bm's forward pass
// against the float64 PyTorch reference computed from the same bf16 weights, with SiLU and with
// GELU experts. The Go model runs in float32 with a chunked scan, the reference in float64 with a
// sequential scan: tolerance |Δ| ≤ 1e-3 + 1e-3·|ref| per logit. The expert chosen for each token
// (counts per MoE block) must match exactly; the fixture keeps every router's top-two gap above
// 2e-3 so that rounding cannot flip a choice.
func TestImportFixture(t *testing.T) {
	dir := filepath.Join("testdata", "fixture")
	bin := filepath.Join(dir, ReleasedWeights)
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("fixture absent (%v); generate it with: python3 bm/weights/fixture/make_fixture.py", err)
	}
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ file, activation string }{
		{"ref_logits.json", "silu"},
		{"ref_logits_gelu.json", "gelu"},
	} {
		t.Run(c.activation, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, c.file))
			if err != nil {
				t.Fatal(err)
			}
			var ref refLogits
			if err := json.Unmarshal(data, &ref); err != nil {
				t.Fatalf("%s: %v", c.file, err)
			}
			if ref.MinMargin < 2e-3 {
				t.Fatalf("%s: router margin %g is too small for a stable comparison", c.file, ref.MinMargin)
			}
			if ref.Activation != c.activation {
				t.Fatalf("%s has activation %q", c.file, ref.Activation)
			}
			// LoadAny reads the config.json beside the archive and imports every tensor.
			cfg, ts, err := LoadAny(bin, ImportOptions{DType: dtypes.Float32})
			if err != nil {
				t.Fatal(err)
			}
			cfg.Activation = c.activation
			cfg.ComputeDType = "float32"
			model, err := bm.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.New()
			if err := IntoContext(ctx, ts); err != nil {
				t.Fatal(err)
			}
			T := len(ref.Tokens)
			tokens := tensors.FromFlatDataAndDimensions(ref.Tokens, 1, T)
			outs := context.MustExecOnceN(backend, ctx.Reuse(), func(ctx *context.Context, tok *Node) []*Node {
				out := model.Forward(ctx, tok, bm.ForwardOptions{Routing: bm.RoutingArgmax})
				return append([]*Node{out.Logits}, out.ExpertCounts...)
			}, tokens)
			if want := 1 + cfg.NumMoE(); len(outs) != want {
				t.Fatalf("%d outputs, want %d", len(outs), want)
			}
			// Expert counts per MoE block, in block order.
			moe := 0
			for i, b := range cfg.Blocks() {
				if b.Kind != bm.KindMoE {
					continue
				}
				moe++
				route, ok := ref.Routes[itoa(i)]
				if !ok {
					t.Fatalf("reference has no routes for block %d", i)
				}
				want := make([]int32, b.Experts)
				for _, e := range route {
					want[e]++
				}
				got := tensors.MustCopyFlatData[int32](outs[moe])
				for e := range want {
					if got[e] != want[e] {
						t.Errorf("block %d expert counts %v, reference %v", i, got, want)
						break
					}
				}
			}
			logits := tensors.MustCopyFlatData[float32](outs[0])
			V := cfg.Vocab
			if len(logits) != T*V || len(ref.Logits) != T {
				t.Fatalf("logits have %d values, reference %d rows; want [%d, %d]", len(logits), len(ref.Logits), T, V)
			}
			var maxAbs, maxRel float64
			for tt := 0; tt < T; tt++ {
				for v := 0; v < V; v++ {
					r := ref.Logits[tt][v]
					d := math.Abs(float64(logits[tt*V+v]) - r)
					maxAbs = max(maxAbs, d)
					maxRel = max(maxRel, d/(1+math.Abs(r)))
					if d > 1e-3+1e-3*math.Abs(r) {
						t.Fatalf("logit [%d, %d] = %g, reference %g (|Δ| = %.3g)", tt, v, logits[tt*V+v], r, d)
					}
				}
			}
			t.Logf("%s: %d×%d logits, max |Δ| = %.3g, max |Δ|/(1+|ref|) = %.3g", c.activation, T, V, maxAbs, maxRel)
		})
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// TestSaveModelRoundTrip writes an import as a model directory and reads it back three ways:
// the directory, its checkpoint, and the torch archive with a config.json beside it.
func TestSaveModelRoundTrip(t *testing.T) {
	cfg := testConfig()
	dir := t.TempDir()
	m := newFakeModel(cfg, dtypes.BFloat16)
	src := filepath.Join(dir, "released")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(src, ReleasedWeights)
	writeTorchArchive(t, bin, m.tensors, archiveOpts{})
	if err := WriteConfig(src, cfg); err != nil {
		t.Fatal(err)
	}
	a, err := ReadTorch(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	im, err := PlanBlackMamba(a, cfg, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := im.All()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "imported")
	if err := SaveModel(out, cfg, im.Specs(), map[string]string{MetaSource: ReleasedWeights}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{out, filepath.Join(out, CheckpointFile), bin, src} {
		gotCfg, got, err := LoadAny(path, ImportOptions{})
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if gotCfg.Pattern != cfg.Pattern || gotCfg.Dim != cfg.Dim || gotCfg.FFN != cfg.FFN || gotCfg.Vocab != cfg.Vocab {
			t.Errorf("%s: config %+v", path, gotCfg)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d tensors, want %d", path, len(got), len(want))
		}
		for n, w := range want {
			if g := got[n]; g == nil || !sameTensor(g, w) {
				t.Errorf("%s: tensor %s differs", path, n)
			}
		}
	}
	// float32 on load converts exactly (bf16 → f32).
	_, got, err := LoadAny(out, ImportOptions{DType: dtypes.Float32})
	if err != nil {
		t.Fatal(err)
	}
	emb := got["/embedding/word_embeddings/weight"]
	if emb.DType() != dtypes.Float32 || fmt.Sprint(float32s(t, emb)) != fmt.Sprint(m.values["embedding.word_embeddings.weight"]) {
		t.Errorf("float32 embedding differs from the archive's values")
	}
}
