package bm

import (
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

// TestSamplerDistribution draws 40,000 tokens from fixed logits and compares the frequencies
// with the expected filtered, renormalised softmax (absolute tolerance 0.01, about 4 standard
// errors), for plain temperature sampling, top-k and top-p.
func TestSamplerDistribution(t *testing.T) {
	logits := []float32{2, 1.5, 0.5, 0, -1, 1}
	softmax := func(temp float64, keep []int) []float64 {
		p := make([]float64, len(logits))
		var s float64
		for _, i := range keep {
			p[i] = math.Exp(float64(logits[i]) / temp)
			s += p[i]
		}
		for i := range p {
			p[i] /= s
		}
		return p
	}
	all := []int{0, 1, 2, 3, 4, 5}
	// Probabilities at T=1, sorted: id0 .391, id1 .237, id5 .144, id2 .087, id3 .053, id4 .019.
	cases := []struct {
		name string
		opts SamplerOptions
		want []float64
	}{
		{"temperature 1", SamplerOptions{Temperature: 1, Seed: 1}, softmax(1, all)},
		{"temperature 0.5", SamplerOptions{Temperature: 0.5, Seed: 2}, softmax(0.5, all)},
		{"top-k 3", SamplerOptions{Temperature: 1, TopK: 3, Seed: 3}, softmax(1, []int{0, 1, 5})},
		{"top-p 0.7", SamplerOptions{Temperature: 1, TopP: 0.7, Seed: 4}, softmax(1, []int{0, 1, 5})},
		{"top-p 0.5", SamplerOptions{Temperature: 1, TopP: 0.5, Seed: 5}, softmax(1, []int{0, 1})},
		{"top-k 4 then top-p 0.99", SamplerOptions{Temperature: 1, TopK: 4, TopP: 0.99, Seed: 6}, softmax(1, []int{0, 1, 5, 2})},
	}
	const n = 40000
	for _, c := range cases {
		s := NewSampler(c.opts)
		counts := make([]float64, len(logits))
		for i := 0; i < n; i++ {
			counts[s.Sample(logits)]++
		}
		for i := range counts {
			if got := counts[i] / n; math.Abs(got-c.want[i]) > 0.01 {
				t.Errorf("%s: id %d drawn with frequency %.4f, want %.4f", c.name, i, got, c.want[i])
			}
		}
	}
}

// TestSamplerGreedyAndSeed checks greedy choice (lowest id on ties), that top-k 1 is greedy,
// and that equal seeds give equal streams and different seeds different ones.
func TestSamplerGreedyAndSeed(t *testing.T) {
	logits := []float32{0.1, 3, -2, 3, 1}
	if got := Greedy().Sample(logits); got != 1 {
		t.Errorf("Greedy = %d, want 1", got)
	}
	if got := NewSampler(SamplerOptions{Temperature: 0}).Sample(logits); got != 1 {
		t.Errorf("temperature 0 = %d, want 1", got)
	}
	k1 := NewSampler(SamplerOptions{Temperature: 2, TopK: 1, Seed: 3})
	for i := 0; i < 50; i++ {
		if got := k1.Sample(logits); got != 1 {
			t.Fatalf("top-k 1 drew %d, want 1", got)
		}
	}
	draw := func(seed uint64) []int {
		s := NewSampler(SamplerOptions{Temperature: 1, Seed: seed})
		var out []int
		for i := 0; i < 64; i++ {
			out = append(out, s.Sample(logits))
		}
		return out
	}
	a, b, c := draw(7), draw(7), draw(8)
	same := func(x, y []int) bool {
		for i := range x {
			if x[i] != y[i] {
				return false
			}
		}
		return true
	}
	if !same(a, b) {
		t.Errorf("equal seeds drew different streams")
	}
	if same(a, c) {
		t.Errorf("seeds 7 and 8 drew the same 64 tokens")
	}
}

// TestSamplerOptionsValidate checks the accepted ranges of each option and that an error
// names the field and the value.
func TestSamplerOptionsValidate(t *testing.T) {
	cases := []struct {
		name string
		opts SamplerOptions
		want string // "" = valid
	}{
		{"greedy", SamplerOptions{}, ""},
		{"all options", SamplerOptions{Temperature: 0.7, TopK: 40, TopP: 0.9, Seed: 3}, ""},
		{"top-p 1", SamplerOptions{Temperature: 1, TopP: 1}, ""},
		{"tiny top-p", SamplerOptions{Temperature: 1, TopP: 1e-9}, ""},
		{"negative temperature", SamplerOptions{Temperature: -0.5}, "Temperature -0.5"},
		{"NaN temperature", SamplerOptions{Temperature: math.NaN()}, "Temperature NaN"},
		{"infinite temperature", SamplerOptions{Temperature: math.Inf(1)}, "Temperature +Inf"},
		{"negative top-k", SamplerOptions{Temperature: 1, TopK: -1}, "TopK -1"},
		{"top-p above 1", SamplerOptions{Temperature: 1, TopP: 1.5}, "TopP 1.5"},
		{"negative top-p", SamplerOptions{Temperature: 1, TopP: -0.1}, "TopP -0.1"},
		{"NaN top-p", SamplerOptions{Temperature: 1, TopP: math.NaN()}, "TopP NaN"},
	}
	for _, c := range cases {
		err := c.opts.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// referenceKept is the candidate set of the sampler's definition, by a full sort: ids by logit,
// ties lower id first; the first TopK; then the shortest prefix whose renormalised
// probability reaches TopP.
func referenceKept(logits []float32, o SamplerOptions) map[int]bool {
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
	keep := len(idx)
	if o.TopK > 0 && o.TopK < keep {
		keep = o.TopK
	}
	top := float64(logits[idx[0]])
	var p []float64
	var sum float64
	for _, i := range idx[:keep] {
		e := math.Exp((float64(logits[i]) - top) / o.Temperature)
		p = append(p, e)
		sum += e
	}
	if o.TopP > 0 && o.TopP < 1 {
		var cum float64
		for j, e := range p {
			if cum += e / sum; cum >= o.TopP {
				keep = j + 1
				break
			}
		}
	}
	set := map[int]bool{}
	for _, i := range idx[:keep] {
		set[i] = true
	}
	return set
}

// TestSamplerKeepsTheSortedSet compares the sampler's candidate set (bucketed, one bucket
// sorted) with the full sort's on vocabulary-sized random logits: continuous ones, and
// quantised ones with many ties at the boundaries, at several temperatures, top-k and top-p.
func TestSamplerKeepsTheSortedSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 60 {
		n := 50277
		if trial%3 == 0 {
			n = 37
		}
		logits := make([]float32, n)
		scale := []float64{0.5, 2, 8}[trial%3]
		for i := range logits {
			v := rng.NormFloat64() * scale
			if trial%2 == 1 {
				v = math.Round(v*4) / 4 // ties
			}
			logits[i] = float32(v)
		}
		opts := SamplerOptions{Temperature: []float64{1, 0.7, 1.3, 0.05}[trial%4], Seed: 1}
		switch trial % 5 {
		case 1:
			opts.TopK = 1 + rng.IntN(n)
		case 2:
			opts.TopP = rng.Float64()
		case 3:
			opts.TopK, opts.TopP = 1+rng.IntN(200), 0.5+rng.Float64()/2
		case 4:
			opts.TopP = 0.999
		}
		want := referenceKept(logits, opts)
		s := NewSampler(opts).(*randomSampler)
		cut, part := s.keep(logits)
		got := map[int]bool{}
		for i, b := range s.b {
			if int(b) < cut {
				got[i] = true
			}
		}
		for _, i := range part {
			got[i] = true
		}
		if len(got) != len(want) {
			t.Fatalf("trial %d (n %d, %+v): kept %d ids, the full sort keeps %d", trial, n, opts, len(got), len(want))
		}
		for i := range want {
			if !got[i] {
				t.Fatalf("trial %d (n %d, %+v): id %d (logit %v) not kept", trial, n, opts, i, logits[i])
			}
		}
	}
}

// BenchmarkSampler times one draw with top-p 0.95 at temperature 0.8 from 50,277 logits of a
// nearly flat distribution (the worst case: the nucleus holds most of the vocabulary).
func BenchmarkSampler(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	logits := make([]float32, 50277)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64())
	}
	s := NewSampler(SamplerOptions{Temperature: 0.8, TopP: 0.95, Seed: 1})
	for b.Loop() {
		s.Sample(logits)
	}
}
