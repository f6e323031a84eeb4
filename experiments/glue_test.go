package experiments

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/gomlx/gomlx/pkg/ml/context/initializers"

	"blackmamba/bm"
	"blackmamba/experiments/results"
	"blackmamba/experiments/train"
)

// TestNoDecay checks the weight-decay exclusions the training drivers give the optimizer.
func TestNoDecay(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
	}{
		{"/decoder/layers/0/mixer/A_log", true},
		{"/decoder/layers/0/mixer/D", true},
		{"/decoder/layers/0/mixer/dt_proj_bias", true},
		{"/decoder/layers/0/mixer/conv1d_bias", true},
		{"/decoder/layers/1/mixer/router_bias", true},
		{"/decoder/layers/0/norm/weight", true},
		{"/decoder/final_layernorm/weight", true},
		{"/decoder/final_layernorm/bias", true},
		{"/decoder/layers/0/mixer/in_proj", false},
		{"/decoder/layers/1/mixer/fc1", false},
		{"/decoder/layers/1/mixer/router_weight", false},
		{"/embedding/word_embeddings/weight", false},
	} {
		if got := NoDecay(c.name); got != c.want {
			t.Errorf("NoDecay(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

// randomWindows serves seeded random token windows [B, T+1] below vocab.
type randomWindows struct {
	vocab, batch, seqLen int
	n                    uint64
}

func (r *randomWindows) Next() ([]int32, error) {
	rng := rand.New(rand.NewPCG(r.n, 5))
	r.n++
	out := make([]int32, r.batch*(r.seqLen+1))
	for i := range out {
		out[i] = int32(rng.IntN(r.vocab))
	}
	return out, nil
}
func (r *randomWindows) State() []byte { return []byte(strconv.FormatUint(r.n, 10)) }
func (r *randomWindows) Restore(s []byte) error {
	var err error
	r.n, err = strconv.ParseUint(string(s), 10, 64)
	return err
}

// TestLossFnSinkhornIters trains a tiny model (vocabulary 64) for 2 steps with one record per
// step and checks the extras that reach the metrics records: every MoE block has its token
// counts (summing to the B·T tokens of the step); a Sinkhorn-routed model records for every
// MoE block a whole number of Sinkhorn rounds between 1 and the unrolled maximum; a model
// routed without Sinkhorn records none.
func TestLossFnSinkhornIters(t *testing.T) {
	backend := cpuBackend(t)
	const B, T, steps = 2, 8, 2
	for _, c := range []struct {
		routing  string
		sinkhorn bool
	}{
		{bm.RoutingSinkhorn, true},
		{bm.RoutingSinkhornVanilla, true},
		{bm.RoutingArgmax, false},
	} {
		t.Run(c.routing, func(t *testing.T) {
			cfg := bm.MustPreset("tiny")
			cfg.Vocab, cfg.VocabReal, cfg.Routing = 64, 64, c.routing
			m, err := bm.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var moe []string
			for i, b := range cfg.Blocks() {
				if b.Kind == bm.KindMoE {
					moe = append(moe, fmt.Sprintf("layer_%02d", i))
				}
			}
			ctx := context.New()
			ctx.SetParam(initializers.ParamInitialSeed, int64(1))
			dir := t.TempDir()
			tr, err := train.New(backend, ctx, LossFn(m, bm.ForwardOptions{}), train.Config{
				Batch: B, SeqLen: T, Optimizer: train.DefaultAdamW(1e-3, steps), Dir: dir, LogEvery: 1,
				Progress: io.Discard,
				HeldOut:  map[string]train.Batches{"random": &randomWindows{vocab: 64, batch: B, seqLen: T, n: 1000}},
			})
			if err != nil {
				t.Fatal(err)
			}
			sum, err := tr.Run(&randomWindows{vocab: 64, batch: B, seqLen: T})
			if err != nil {
				t.Fatal(err)
			}
			recs, err := results.ReadTrainLog(sum.Metrics)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != steps {
				t.Fatalf("%d records, want %d", len(recs), steps)
			}
			maxIter := float64(bm.SinkhornRounds(cfg, c.routing))
			for _, r := range recs {
				for _, l := range moe {
					var tot float64
					for _, v := range r.ExpertCounts[l] {
						tot += v
					}
					if tot != B*T {
						t.Errorf("step %d %s: counts %v sum to %g, want %d tokens", r.Step, l, r.ExpertCounts[l], tot, B*T)
					}
					it, ok := r.Extras[SinkhornItersPrefix+l]
					switch {
					case c.sinkhorn && !ok:
						t.Errorf("step %d: no %s%s in the extras %v", r.Step, SinkhornItersPrefix, l, r.Extras)
					case c.sinkhorn && (it < 1 || it > maxIter || it != math.Round(it)):
						t.Errorf("step %d %s: %g Sinkhorn rounds, want a whole number in [1, %g]", r.Step, l, it, maxIter)
					case !c.sinkhorn && ok:
						t.Errorf("step %d %s: %g Sinkhorn rounds recorded for routing %s", r.Step, l, it, c.routing)
					}
				}
				t.Logf("step %d extras %v", r.Step, r.Extras)
			}
		})
	}
}
