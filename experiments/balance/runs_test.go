package balance_test

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"blackmamba/bm"
	"blackmamba/experiments/balance"
	"blackmamba/experiments/results"
	"blackmamba/experiments/training"
)

const eps = 1e-12

// result returns the DomainAll result of mode with one layer per counts row.
func result(model, routing, mode string, layers []int, counts ...[]float64) balance.Result {
	r := balance.Result{Model: model, Routing: routing, Mode: mode, Domain: balance.DomainAll}
	for i, c := range counts {
		r.Layers = append(r.Layers, balance.Stats(layers[i], c))
		if i == 0 {
			for _, v := range c {
				r.Tokens += int(v)
			}
		}
	}
	return r
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sameFloat(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) <= eps
}

// TestReadAnyTrainingResult writes a training-experiment result (the format of "blackmamba
// experiment balance") with the real writer and reads it back as balance runs: non-MoE runs are
// dropped; labels, routing, final held-out loss, records and the per-mode results come through
// (results renamed after the run); Sinkhorn rounds are the step-weighted mean of the records'
// extras; the ablation rows hold the statistics computed by hand; the figures render.
func TestReadAnyTrainingResult(t *testing.T) {
	layers := []int{1, 3}
	sinkArgmax := result("tiny", bm.RoutingSinkhorn, balance.ModeArgmax, layers, []float64{10, 10, 10, 10}, []float64{20, 10, 5, 5})
	sinkTrain := result("tiny", bm.RoutingSinkhorn, bm.RoutingSinkhorn, layers, []float64{10, 10, 10, 10}, []float64{10, 10, 10, 10})
	argmax := result("tiny", bm.RoutingArgmax, balance.ModeArgmax, layers, []float64{40, 0, 0, 0}, []float64{25, 5, 5, 5})
	recs := func(iters1, iters2 float64) []results.TrainRecord {
		// Record 1 covers steps 1–2, record 2 steps 3–10.
		return []results.TrainRecord{
			{Step: 2, Loss: 4, BalanceCV: map[string]float64{"layer_01": 0.5, "layer_03": 0.3},
				Extras: map[string]float64{"sinkhorn_iters/layer_01": iters1, "sinkhorn_iters/layer_03": 1, "aux_loss": 7}},
			{Step: 10, Loss: 3, BalanceCV: map[string]float64{"layer_01": 0.2, "layer_03": 0.1},
				Extras: map[string]float64{"sinkhorn_iters/layer_01": iters2, "sinkhorn_iters/layer_03": 1}},
		}
	}
	noIters := []results.TrainRecord{{Step: 10, Loss: 3.5, BalanceCV: map[string]float64{"layer_01": 1.2, "layer_03": 0.9}}}
	tr := &training.Result{Family: "tiny", SeqLen: 16, Batch: 2, Steps: 10, Runs: []training.RunResult{
		{Label: "tiny-mamba", Config: "tiny-mamba", MoE: false, FinalHeldOutMean: 4.1, Records: noIters},
		{Label: "tiny", Config: "tiny", Routing: bm.RoutingSinkhorn, MoE: true, FinalHeldOut: map[string]float64{"web": 3.9, "code": 4.1},
			FinalHeldOutMean: 4.0, Records: recs(1, 3), Balance: mustJSON(t, []balance.Result{sinkArgmax, sinkTrain})},
		{Label: "tiny argmax", Config: "tiny", Routing: bm.RoutingArgmax, MoE: true, Ablation: true, FinalHeldOutMean: 3.8,
			Records: noIters, Balance: mustJSON(t, []balance.Result{argmax})},
		{Label: "tiny switch", Config: "tiny", Routing: bm.RoutingSwitch, MoE: true, Ablation: true, FinalHeldOutMean: 4.4,
			Records: noIters, BalanceError: "held-out batch 0: boom"},
	}}
	path := filepath.Join(t.TempDir(), "balance.json")
	if err := tr.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	runs, err := balance.ReadAny(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 3 || runs[0].Label != "tiny" || runs[1].Label != "tiny argmax" || runs[2].Label != "tiny switch" {
		t.Fatalf("got runs %+v, want tiny, tiny argmax, tiny switch", runs)
	}
	r0 := runs[0]
	if r0.Routing != bm.RoutingSinkhorn || r0.FinalHeldOutMean != 4.0 || r0.FinalHeldOut["web"] != 3.9 || len(r0.Records) != 2 || len(r0.Results) != 2 {
		t.Errorf("run tiny: %+v", r0)
	}
	for _, x := range r0.Results {
		if x.Model != "tiny" {
			t.Errorf("run tiny: result model %q, want the run label", x.Model)
		}
	}
	if runs[1].Results[0].Model != "tiny argmax" {
		t.Errorf("run tiny argmax: result model %q", runs[1].Results[0].Model)
	}
	if runs[2].Error != "held-out batch 0: boom" || len(runs[2].Results) != 0 {
		t.Errorf("run tiny switch: error %q, %d results", runs[2].Error, len(runs[2].Results))
	}
	// Layer 1: 1 round over 2 steps, 3 over 8; layer 3: 1 round throughout.
	// (2·1 + 8·3 + 2·1 + 8·1) / 20 = 1.8.
	if it, ok := r0.SinkhornIters(); !ok || !sameFloat(it, 1.8) {
		t.Errorf("Sinkhorn rounds %g (%v), want 1.8", it, ok)
	}
	if it, ok := runs[1].SinkhornIters(); ok || !math.IsNaN(it) {
		t.Errorf("argmax run: Sinkhorn rounds %g (%v), want none", it, ok)
	}

	mean := func(cs ...[]float64) float64 {
		var s float64
		for _, c := range cs {
			s += results.CoefficientOfVariation(c) / float64(len(cs))
		}
		return s
	}
	nan := math.NaN()
	want := []balance.AblationRow{
		{Label: "tiny", Routing: bm.RoutingSinkhorn, HeldOut: 4.0,
			CVArgmax: mean([]float64{10, 10, 10, 10}, []float64{20, 10, 5, 5}), CVTrain: 0,
			MaxShareArgmax: 0.5, MaxShareTrain: 0.25, SinkhornIters: 1.8},
		// Trained with argmax: the training route is argmax.
		{Label: "tiny argmax", Routing: bm.RoutingArgmax, HeldOut: 3.8,
			CVArgmax: mean([]float64{40, 0, 0, 0}, []float64{25, 5, 5, 5}), CVTrain: mean([]float64{40, 0, 0, 0}, []float64{25, 5, 5, 5}),
			MaxShareArgmax: 1, MaxShareTrain: 1, SinkhornIters: nan},
		{Label: "tiny switch", Routing: bm.RoutingSwitch, HeldOut: 4.4,
			CVArgmax: nan, CVTrain: nan, MaxShareArgmax: nan, MaxShareTrain: nan, SinkhornIters: nan},
	}
	rows := balance.Ablation(runs)
	if len(rows) != len(want) {
		t.Fatalf("%d ablation rows, want %d", len(rows), len(want))
	}
	for i, w := range want {
		g := rows[i]
		if g.Label != w.Label || g.Routing != w.Routing || !sameFloat(g.HeldOut, w.HeldOut) || !sameFloat(g.CVArgmax, w.CVArgmax) ||
			!sameFloat(g.CVTrain, w.CVTrain) || !sameFloat(g.MaxShareArgmax, w.MaxShareArgmax) ||
			!sameFloat(g.MaxShareTrain, w.MaxShareTrain) || !sameFloat(g.SinkhornIters, w.SinkhornIters) {
			t.Errorf("ablation row %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	md := strings.Split(strings.TrimSpace(balance.AblationMarkdown(rows)), "\n")
	if len(md) != 5 {
		t.Fatalf("Markdown table of %d lines, want 5:\n%s", len(md), strings.Join(md, "\n"))
	}
	// Sorted by held-out loss: argmax 3.8, sinkhorn 4.0, switch 4.4.
	for i, prefix := range []string{"| tiny argmax | argmax | 3.8000 |", "| tiny | sinkhorn | 4.0000 | 0.306 | 0.000 | 0.500 | 0.250 | 1.80 |",
		"| tiny switch | switch | 4.4000 | – | – | – | – | – |"} {
		if !strings.HasPrefix(md[2+i], prefix) {
			t.Errorf("table line %d %q, want it to start with %q", 2+i, md[2+i], prefix)
		}
	}
	// The CV of {20, 10, 5, 5} is √37.5/10 = 0.61237; averaged with the balanced layer, 0.30619.
	if got := mean([]float64{10, 10, 10, 10}, []float64{20, 10, 5, 5}); math.Abs(got-math.Sqrt(37.5)/20) > eps {
		t.Errorf("mean CV %g, want √37.5/20 = %g", got, math.Sqrt(37.5)/20)
	}

	over := balance.OverTraining(runs)
	if len(over) != 3 || len(over["tiny"]) != 2 {
		t.Errorf("records over training for %d runs (tiny: %d), want 3 (2)", len(over), len(over["tiny"]))
	}
	dir := t.TempDir()
	ablation := map[string][]balance.Result{}
	for _, r := range runs {
		if len(r.Results) > 0 {
			ablation[r.Label] = r.Results
		}
	}
	if err := balance.PlotAll(balance.AllResults(runs), ablation, dir); err != nil {
		t.Fatal(err)
	}
	if err := balance.PlotBalanceOverTraining(over, filepath.Join(dir, "cv.png")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"balance_tiny_argmax.png", "shares_tiny-argmax_argmax.svg", "balance_ablation.png", "cv.png", "cv.svg"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("figure %s: %v", f, err)
		}
	}
}

// TestReadAnyResultList reads a plain list of results (WriteJSON) as one run per model, in
// order of first appearance, without training data.
func TestReadAnyResultList(t *testing.T) {
	layers := []int{1}
	rs := []balance.Result{
		result("a", bm.RoutingSinkhorn, balance.ModeArgmax, layers, []float64{1, 2}),
		result("b", bm.RoutingArgmax, balance.ModeArgmax, layers, []float64{3, 1}),
		result("a", bm.RoutingSinkhorn, bm.RoutingSinkhorn, layers, []float64{2, 2}),
	}
	path := filepath.Join(t.TempDir(), "list.json")
	if err := balance.WriteJSON(path, rs); err != nil {
		t.Fatal(err)
	}
	runs, err := balance.ReadAny(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 || runs[0].Label != "a" || len(runs[0].Results) != 2 || runs[1].Label != "b" || len(runs[1].Results) != 1 {
		t.Fatalf("got %+v, want runs a (2 results) and b (1)", runs)
	}
	if runs[0].Routing != bm.RoutingSinkhorn || !math.IsNaN(runs[0].FinalHeldOutMean) || len(runs[0].Records) != 0 {
		t.Errorf("run a: routing %q, held-out %g, %d records", runs[0].Routing, runs[0].FinalHeldOutMean, len(runs[0].Records))
	}
	rows := balance.Ablation(runs)
	if !sameFloat(rows[0].CVTrain, 0) || !sameFloat(rows[0].CVArgmax, results.CoefficientOfVariation([]float64{1, 2})) || !sameFloat(rows[1].MaxShareArgmax, 0.75) {
		t.Errorf("rows %+v", rows)
	}
}

// TestReadAnyErrors checks that malformed files are rejected with the file and the place named.
func TestReadAnyErrors(t *testing.T) {
	for _, c := range []struct{ name, text, want string }{
		{"empty", "  \n", "empty file"},
		{"number", "42", "want a JSON list"},
		{"bad list", `[{"model": 1}]`, "malformed list of results"},
		{"list without counts", `[{"model": "m", "mode": "argmax", "domain": "all", "layers": [{"layer": 1}]}]`, "layer 0: no counts"},
		{"object without runs", `{"family": "tiny"}`, `no "runs" field`},
		{"no MoE run", `{"runs": [{"label": "m", "moe": false}]}`, "none of the 1 runs has MoE blocks"},
		{"bad balance", `{"runs": [{"label": "x", "moe": true, "balance": {"a": 1}}]}`, "run 0 (x): malformed balance analysis"},
		{"balance without counts", `{"runs": [{"label": "x", "moe": true, "balance": [{"mode": "argmax", "layers": [{"layer": 3}]}]}]}`, "run 0 (x): result 0"},
		{"no label", `{"runs": [{"moe": true}]}`, "run 0 has no label"},
		{"truncated", `{"runs": [`, "malformed training-experiment result"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "r.json")
			if err := os.WriteFile(path, []byte(c.text), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := balance.ReadAny(path)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %v, want one naming %s and containing %q", err, path, c.want)
			}
		})
	}
	if _, err := balance.ReadAny(filepath.Join(t.TempDir(), "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("missing file: error %v", err)
	}
}
