package balance

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
	"blackmamba/experiments/results"
	"blackmamba/experiments/train"
	"blackmamba/xla"
)

const tol = 1e-12

var (
	testBackend    backends.Backend
	testBackendErr error
)

// cpuBackend returns the shared pure-Go CPU backend of the tests.
func cpuBackend(t *testing.T) backends.Backend {
	t.Helper()
	if testBackend == nil && testBackendErr == nil {
		testBackend, testBackendErr = backends.NewWithConfig(xla.CPUConfig)
	}
	if testBackendErr != nil {
		t.Fatal(testBackendErr)
	}
	return testBackend
}

func near(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) <= tol
}

func TestStats(t *testing.T) {
	for _, tc := range []struct {
		name   string
		counts []float64
		want   LayerStats
	}{
		{"uniform", []float64{5, 5, 5, 5}, LayerStats{MaxShare: 0.25, MinShare: 0.25, CV: 0, Entropy: math.Log(4), NormEntropy: 1, UnderHalf: 0}},
		// shares .6 .2 .1 .1; mean 2.5, population variance (12.25+.25+2.25+2.25)/4 = 4.25;
		// fair share 2.5, half of it 1.25: two experts below.
		{"skewed", []float64{6, 2, 1, 1}, LayerStats{MaxShare: 0.6, MinShare: 0.1, CV: math.Sqrt(4.25) / 2.5,
			Entropy:     -(0.6*math.Log(0.6) + 0.2*math.Log(0.2) + 2*0.1*math.Log(0.1)),
			NormEntropy: -(0.6*math.Log(0.6) + 0.2*math.Log(0.2) + 2*0.1*math.Log(0.1)) / math.Log(4), UnderHalf: 0.5}},
		// mean 2, variance (4+4+36+4)/4 = 12: CV = sqrt(12)/2 = sqrt(3).
		{"one-hot", []float64{0, 0, 8, 0}, LayerStats{MaxShare: 1, MinShare: 0, CV: math.Sqrt(3), Entropy: 0, NormEntropy: 0, UnderHalf: 0.75}},
		{"single expert", []float64{7}, LayerStats{MaxShare: 1, MinShare: 1, CV: 0, Entropy: 0, NormEntropy: 1, UnderHalf: 0}},
		{"empty layer", []float64{0, 0}, LayerStats{MaxShare: math.NaN(), MinShare: math.NaN(), CV: math.NaN(), Entropy: math.NaN(), NormEntropy: math.NaN(), UnderHalf: math.NaN()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Stats(3, tc.counts)
			if got.Layer != 3 || len(got.Counts) != len(tc.counts) {
				t.Fatalf("layer %d counts %v", got.Layer, got.Counts)
			}
			for _, f := range []struct {
				n    string
				g, w float64
			}{{"MaxShare", got.MaxShare, tc.want.MaxShare}, {"MinShare", got.MinShare, tc.want.MinShare}, {"CV", got.CV, tc.want.CV},
				{"Entropy", got.Entropy, tc.want.Entropy}, {"NormEntropy", got.NormEntropy, tc.want.NormEntropy}, {"UnderHalf", got.UnderHalf, tc.want.UnderHalf}} {
				if !near(f.g, f.w) {
					t.Errorf("%s = %.15g, want %.15g (±%g)", f.n, f.g, f.w, tol)
				}
			}
		})
	}
}

// fakeBatches serves fixed batches; its state is the index of the next one.
type fakeBatches struct {
	batches [][]int32
	pos     int
	seqLen  int
}

func (f *fakeBatches) Next() ([]int32, error) {
	if f.pos >= len(f.batches) {
		return nil, fmt.Errorf("fake: out of batches")
	}
	f.pos++
	return f.batches[f.pos-1], nil
}
func (f *fakeBatches) State() []byte { return []byte{byte(f.pos)} }
func (f *fakeBatches) Restore(s []byte) error {
	if len(s) != 1 {
		return fmt.Errorf("fake: bad state")
	}
	f.pos = int(s[0])
	return nil
}
func (f *fakeBatches) SeqLen() int { return f.seqLen }

// plainBatches is a fakeBatches without the SeqLen method.
type plainBatches struct{ f fakeBatches }

func (p *plainBatches) Next() ([]int32, error) { return p.f.Next() }
func (p *plainBatches) State() []byte          { return p.f.State() }
func (p *plainBatches) Restore(s []byte) error { return p.f.Restore(s) }

func tinyConfig() bm.Config {
	cfg := bm.MustPreset("tiny")
	cfg.Vocab, cfg.VocabReal, cfg.Dim, cfg.FFN = 97, 90, 16, 32
	return cfg
}

// newTinyModel creates the variables of a random tiny model in a fresh context.
func newTinyModel(t *testing.T, backend backends.Backend, cfg bm.Config) *context.Context {
	t.Helper()
	m, err := bm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.New()
	exec, err := context.NewExec(backend, ctx, func(ctx *context.Context, tokens *Node) *Node {
		return m.Forward(ctx, tokens, bm.ForwardOptions{}).Logits
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	if _, err := exec.Exec([][]int32{{1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 3, 4, 5, 6, 7, 8}}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

func TestAnalyzeAndRouteText(t *testing.T) {
	backend := cpuBackend(t)
	cfg := tinyConfig()
	ctx := newTinyModel(t, backend, cfg)
	const B, T, nBatches = 2, 8, 2
	rng := rand.New(rand.NewPCG(7, 11))
	heldOut := map[string]*fakeBatches{}
	for _, d := range []string{"code", "prose"} {
		fb := &fakeBatches{seqLen: T, pos: 1} // start past batch 0 to check the position is kept
		for range nBatches + 1 {
			b := make([]int32, B*(T+1))
			for i := range b {
				b[i] = int32(rng.IntN(cfg.VocabReal))
			}
			fb.batches = append(fb.batches, b)
		}
		heldOut[d] = fb
	}
	hb := map[string]train.Batches{}
	for d, fb := range heldOut {
		hb[d] = fb
	}
	rs, err := Analyze(backend, ctx, cfg, hb, nBatches)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2*3 {
		t.Fatalf("got %d results, want 6 (2 modes × (2 domains + all))", len(rs))
	}
	layers := moeBlocks(cfg)
	for _, r := range rs {
		wantTok := B * T * nBatches
		if r.Domain == DomainAll {
			wantTok *= 2
		}
		if r.Tokens != wantTok || len(r.Layers) != len(layers) {
			t.Fatalf("%s/%s: tokens %d layers %d, want %d and %d", r.Mode, r.Domain, r.Tokens, len(r.Layers), wantTok, len(layers))
		}
		for j, l := range r.Layers {
			var sum float64
			for _, c := range l.Counts {
				sum += c
			}
			if l.Layer != layers[j] || sum != float64(wantTok) {
				t.Errorf("%s/%s layer %d: counts sum %g, want %d", r.Mode, r.Domain, l.Layer, sum, wantTok)
			}
		}
	}
	for d, fb := range heldOut {
		if fb.pos != 1 {
			t.Errorf("held-out %s left at batch %d, want 1", d, fb.pos)
		}
	}

	// The argmax counts of Analyze (bm.Model.Forward) must equal the counts of the per-token
	// choices of RouteText (this package's own stack loop), run batch row by batch row.
	for _, r := range rs {
		if r.Mode != ModeArgmax || r.Domain == DomainAll {
			continue
		}
		want := make([][]float64, len(layers))
		for j := range want {
			want[j] = make([]float64, 8)
		}
		fb := heldOut[r.Domain]
		for bi := 1; bi <= nBatches; bi++ {
			for row := range B {
				ids := make([]int, T)
				for k := range T {
					ids[k] = int(fb.batches[bi][row*(T+1)+k])
				}
				ch, err := RouteText(backend, ctx, cfg, ids)
				if err != nil {
					t.Fatal(err)
				}
				if len(ch) != len(layers) || len(ch[0]) != T {
					t.Fatalf("RouteText shape %d×%d, want %d×%d", len(ch), len(ch[0]), len(layers), T)
				}
				for j := range ch {
					for _, e := range ch[j] {
						want[j][e]++
					}
				}
			}
		}
		for j, l := range r.Layers {
			for e := range l.Counts {
				if l.Counts[e] != want[j][e] {
					t.Errorf("%s layer %d expert %d: Analyze %g, RouteText %g", r.Domain, l.Layer, e, l.Counts[e], want[j][e])
				}
			}
		}
	}

	// Plots and JSON round trip.
	dir := t.TempDir()
	if err := PlotAll(rs, map[string][]Result{"sinkhorn": rs}, dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"balance_tiny_argmax.png", "shares_tiny_sinkhorn.svg", "balance_ablation.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("plot %s missing or empty: %v", f, err)
		}
	}
	p := filepath.Join(dir, "balance.json")
	if err := WriteJSON(p, rs); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(p)
	if err != nil || len(back) != len(rs) || back[0].Layers[1].CV != rs[0].Layers[1].CV {
		t.Fatalf("JSON round trip: %v", err)
	}
	recs := []results.TrainRecord{{Step: 10, BalanceCV: map[string]float64{"layer_01": 0.5, "layer_03": 0.3}}, {Step: 20, BalanceCV: map[string]float64{"layer_01": 0.2}}}
	if err := PlotBalanceOverTraining(map[string][]results.TrainRecord{"run": recs}, filepath.Join(dir, "cv.png")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cv.svg")); err != nil {
		t.Error(err)
	}
}

func TestAnalyzeErrors(t *testing.T) {
	backend := cpuBackend(t)
	cfg := tinyConfig()
	ctx := newTinyModel(t, backend, cfg)
	bad := &fakeBatches{seqLen: 8, batches: [][]int32{make([]int32, 17)}}
	if _, err := Analyze(backend, ctx, cfg, map[string]train.Batches{"x": bad}, 1); err == nil {
		t.Error("batch of 17 tokens with T=8: no error")
	}
	oov := &fakeBatches{seqLen: 2, batches: [][]int32{{1, 500, 3}}}
	if _, err := Analyze(backend, ctx, cfg, map[string]train.Batches{"x": oov}, 1); err == nil {
		t.Error("token 500 with vocabulary 97: no error")
	}
	// Without a SeqLen method T is cfg.MaxSeqLen (256); WithSeqLen declares another.
	plain := &plainBatches{fakeBatches{batches: [][]int32{make([]int32, 2*9)}}}
	if _, err := Analyze(backend, ctx, cfg, map[string]train.Batches{"x": plain}, 1); err == nil {
		t.Error("batch of 18 tokens with max_seq_len 256: no error")
	}
	plain.f.pos = 0
	rs, err := Analyze(backend, ctx, cfg, map[string]train.Batches{"x": WithSeqLen(plain, 8)}, 1)
	if err != nil || rs[0].Tokens != 16 {
		t.Errorf("WithSeqLen(8) on 2×9 tokens: %v, want 16 tokens", err)
	}
	if _, err := RouteText(backend, ctx, cfg, []int{1, -1}); err == nil {
		t.Error("negative token id: no error")
	}
}
