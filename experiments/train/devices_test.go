package train

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/xla"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/experiments/results"
	"blackmamba/xla"
)

// TestDevicesValidation checks the errors for a bad number of devices: negative, not dividing
// the batch, and more than the backend has (the pure-Go backend has one device).
func TestDevicesValidation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		devices int
		batch   int
		want    []string
	}{
		{"negative", -1, 4, []string{"devices -1", ">= 0"}},
		{"batch not divisible", 3, 4, []string{"batch 4", "not divisible by devices 3"}},
		{"more than the backend has", 2, 4, []string{"devices 2 exceeds the 1 device(s) of backend"}},
	} {
		cfg := toyConfig("", 10)
		cfg.Devices, cfg.Batch = tc.devices, tc.batch
		_, err := New(testBackend, newToyCtx(), toyLoss, cfg)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: got error %v, want one containing %q", tc.name, err, w)
			}
		}
	}
}

// TestOneDeviceIsDefault runs the toy for 8 steps with Devices 0 (default) and 1: both take the
// single-device path, so every record (loss, gradient norm, learning rate, extras, counts,
// held-out loss) and every final variable must be bitwise identical.
func TestOneDeviceIsDefault(t *testing.T) {
	const steps = 8
	var logs [3][]results.TrainRecord
	var trs [3]*Trainer
	for i, devices := range []int{0, 1, 1} {
		dir := t.TempDir()
		cfg := toyConfig(dir, steps)
		cfg.Devices = devices
		if i == 2 {
			cfg.Sharded = toySharded // no effect on one device
		}
		tr, err := New(testBackend, newToyCtx(), toyLoss, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Run(newSynth(1, 4, 16)); err != nil {
			t.Fatalf("devices %d: %v", devices, err)
		}
		logs[i], trs[i] = readLog(t, dir), tr
	}
	names := []string{"devices 0", "devices 1", "devices 1 with Sharded"}
	for k := 1; k < len(logs); k++ {
		if len(logs[0]) != steps || len(logs[k]) != steps {
			t.Fatalf("records: %d and %d, want %d each", len(logs[0]), len(logs[k]), steps)
		}
		for i := range logs[0] {
			a, b := logs[0][i], logs[k][i]
			if a.Loss != b.Loss || a.GradNorm != b.GradNorm || a.LR != b.LR || a.HeldOut["synth"] != b.HeldOut["synth"] ||
				a.Extras["logit_sq"] != b.Extras["logit_sq"] || !equalFloats(a.ExpertCounts["toy"], b.ExpertCounts["toy"]) {
				t.Errorf("step %d differs:\n %s: %+v\n %s: %+v", i+1, names[0], a, names[k], b)
			}
		}
		for v := range trs[0].Context().IterVariables() {
			w := trs[k].Context().GetVariableByScopeAndName(v.Scope(), v.Name())
			if w == nil {
				t.Fatalf("variable %s missing with %s", v.ScopeAndName(), names[k])
			}
			var eq bool
			v.MustValue().ConstBytes(func(x []byte) { w.MustValue().ConstBytes(func(y []byte) { eq = bytes.Equal(x, y) }) })
			if !eq {
				t.Errorf("variable %s differs between %s and %s", v.ScopeAndName(), names[0], names[k])
			}
		}
	}
}

// toySharded selects the toy's two matrices, embed/weight [32, 16] and head/weight [16, 32], for
// Config.Sharded: split along their first axis, the embedding is gathered from and the head is
// contracted over a split axis.
func toySharded(v *context.Variable) bool {
	return v.Name() == "weight" && v.Shape().Rank() == 2
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// multiDeviceBackend returns the backend named by $BLACKMAMBA_TEST_BACKEND (e.g.
// "xla:/path/to/xla_cuda_plugin.so" on a machine with several GPUs), or the pure-Go one.
func multiDeviceBackend(t *testing.T) backends.Backend {
	t.Helper()
	config := os.Getenv("BLACKMAMBA_TEST_BACKEND")
	if config == "" {
		return testBackend
	}
	b, _, err := xla.New(config)
	if err != nil {
		t.Fatalf("backend %q from $BLACKMAMBA_TEST_BACKEND: %v", config, err)
	}
	return b
}

// TestDataParallelMatchesOneDevice trains the toy for 10 steps at global batch 8 on one device
// and data-parallel on 2 (and 4 when there are) devices of the test backend, from the same
// initialization and batches. Per step, the losses must agree within 1e-4 (relative), the
// gradient norms and the mean squared logits within 1e-3, the prediction counts must sum to the
// global batch's 8·16 tokens and differ by at most 2% of them in L1; the held-out losses within
// 1e-4 and the final variables within 1e-3 (absolute, values O(1)). The data-parallel run writes
// and resumes nothing, but its final checkpoint gathers the replicated variables to the host.
//
// It needs a backend with at least 2 devices, so it is skipped on the pure-Go backend; on a GPU
// machine, run the test binary with BLACKMAMBA_TEST_BACKEND set to the XLA plugin.
func TestDataParallelMatchesOneDevice(t *testing.T) {
	backend := multiDeviceBackend(t)
	n := backend.NumDevices()
	if n < 2 {
		t.Skipf("backend %s has %d device: data-parallel comparison needs >= 2 (set BLACKMAMBA_TEST_BACKEND)", backend.Name(), n)
	}
	const steps, batch = 10, 8
	run := func(devices int, sharded bool, alias string) ([]results.TrainRecord, *Trainer) {
		dir := t.TempDir()
		cfg := toyConfig(dir, steps)
		cfg.Batch, cfg.Devices, cfg.Alias = batch, devices, alias
		if sharded {
			cfg.Sharded = toySharded
		}
		cfg.HeldOut = map[string]Batches{"synth": newSynth(7, batch, 16)}
		tr, err := New(backend, newToyCtx(), toyLoss, cfg)
		if err != nil {
			t.Fatalf("devices %d: %v", devices, err)
		}
		if _, err := tr.Run(newSynth(1, batch, 16)); err != nil {
			t.Fatalf("devices %d: %v", devices, err)
		}
		return readLog(t, dir), tr
	}
	ref, refTr := run(1, false, "")
	for _, c := range []struct {
		devices int
		sharded bool
		alias   string
	}{{2, false, ""}, {2, true, ""}, {2, false, "on"}, {2, true, "on"}, {4, false, ""}, {4, true, ""}} {
		devices := c.devices
		if devices > n {
			break
		}
		got, tr := run(devices, c.sharded, c.alias)
		label := fmt.Sprintf("devices %d (sharded %v, alias %q)", devices, c.sharded, c.alias)
		if want := c.alias == "on"; tr.Aliased() != want {
			t.Errorf("%s: Aliased() = %v, want %v", label, tr.Aliased(), want)
		}
		if c.sharded {
			if tr.dp == nil || tr.dp.sharded != 6 { // 2 matrices and their 2 moments each
				t.Fatalf("devices %d sharded: %v variables split, want 6", devices, tr.dp)
			}
			for v := range tr.Context().IterVariables() {
				if toySharded(v) && v.ShardingSpec().NumDevicesShardingAxis(0) != devices {
					t.Errorf("devices %d: %s is not split over the devices along its first axis (%v)", devices, v.ScopeAndName(), v.ShardingSpec())
				}
			}
		}
		if len(got) != len(ref) {
			t.Fatalf("%s: %d records, want %d", label, len(got), len(ref))
		}
		for i := range ref {
			a, b := ref[i], got[i]
			t.Logf("%s step %d: loss %.6f vs %.6f, grad norm %.6f vs %.6f", label, a.Step, a.Loss, b.Loss, a.GradNorm, b.GradNorm)
			if !relClose(a.Loss, b.Loss, 1e-4) || !relClose(a.GradNorm, b.GradNorm, 1e-3) || a.LR != b.LR ||
				!relClose(a.Extras["logit_sq"], b.Extras["logit_sq"], 1e-3) {
				t.Errorf("%s, step %d: loss %v / %v, grad norm %v / %v, lr %v / %v, logit_sq %v / %v (1 device / data-parallel)",
					label, a.Step, a.Loss, b.Loss, a.GradNorm, b.GradNorm, a.LR, b.LR, a.Extras["logit_sq"], b.Extras["logit_sq"])
			}
			ca, cb := a.ExpertCounts["toy"], b.ExpertCounts["toy"]
			var sum, l1 float64
			for j := range cb {
				sum += cb[j]
				l1 += math.Abs(ca[j] - cb[j])
			}
			if len(ca) != len(cb) || sum != batch*16 || l1 > 0.02*batch*16 {
				t.Errorf("%s, step %d: counts %v, want a sum of %d close to %v", label, a.Step, cb, batch*16, ca)
			}
			if ha, hb := a.HeldOut["synth"], b.HeldOut["synth"]; (ha == 0) != (hb == 0) || !relClose(ha, hb, 1e-4) {
				t.Errorf("%s, step %d: held-out %v / %v", label, a.Step, ha, hb)
			}
		}
		for v := range refTr.Context().IterVariables() {
			w := tr.Context().GetVariableByScopeAndName(v.Scope(), v.Name())
			if w == nil {
				t.Fatalf("%s: variable %s missing", label, v.ScopeAndName())
			}
			x, y := flatFloat64(t, v.MustValue()), flatFloat64(t, w.MustValue())
			for j := range x {
				if math.Abs(x[j]-y[j]) > 1e-3 {
					t.Errorf("%s: variable %s[%d] = %v, want %v (1 device)", label, v.ScopeAndName(), j, y[j], x[j])
					break
				}
			}
		}
	}
}

func relClose(a, b, tol float64) bool {
	return math.Abs(a-b) <= tol*math.Max(1, math.Abs(a))
}

// flatFloat64 returns a float32, float64, int64, int32 or uint64 tensor's values (any rank) as float64.
func flatFloat64(t *testing.T, x *tensors.Tensor) []float64 {
	t.Helper()
	var out []float64
	err := x.ConstFlatData(func(data any) {
		switch d := data.(type) {
		case []float32:
			for _, f := range d {
				out = append(out, float64(f))
			}
		case []float64:
			out = append(out, d...)
		case []int64:
			for _, f := range d {
				out = append(out, float64(f))
			}
		case []int32:
			for _, f := range d {
				out = append(out, float64(f))
			}
		case []uint64: // e.g. the random number generator's state; compared through float64
			for _, f := range d {
				out = append(out, float64(f))
			}
		}
	})
	if err != nil || out == nil {
		t.Fatalf("tensor %s: cannot read it as float64 (%v)", x.Shape(), err)
	}
	return out
}
