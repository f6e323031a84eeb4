package bm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Sampler draws the next token from the logits of one position. The decoder passes only the
// logits of the real vocabulary (ids < VocabReal), so padding ids are never drawn.
type Sampler interface {
	Sample(logits []float32) int
}

// SamplerOptions configure NewSampler. The filters apply in the order temperature, top-k,
// top-p.
type SamplerOptions struct {
	Temperature float64 // softmax temperature; <= 0 means greedy (argmax)
	TopK        int     // keep only the TopK most likely ids; 0 keeps all
	TopP        float64 // nucleus: keep the smallest set of most likely ids whose probability reaches TopP; 0 or >= 1 keeps all
	Seed        uint64  // seed of the random stream: equal seeds draw equal sequences
}

// Validate reports options that NewSampler would otherwise read loosely: Temperature must be
// finite and >= 0 (0 is greedy), TopK >= 0 (0 keeps all), TopP 0 (off) or in (0, 1] (1 keeps
// all). The error names the field and its value.
func (o SamplerOptions) Validate() error {
	switch {
	case math.IsNaN(o.Temperature) || math.IsInf(o.Temperature, 0) || o.Temperature < 0:
		return fmt.Errorf("bm: sampler Temperature %v: want a finite value >= 0 (0 is greedy)", o.Temperature)
	case o.TopK < 0:
		return fmt.Errorf("bm: sampler TopK %d: want >= 0 (0 keeps all ids)", o.TopK)
	case math.IsNaN(o.TopP) || o.TopP < 0 || o.TopP > 1:
		return fmt.Errorf("bm: sampler TopP %v: want a value in (0, 1], or 0 for no nucleus filter", o.TopP)
	}
	return nil
}

// NewSampler returns a Sampler with the given options. It does not validate them (see
// Validate): a negative temperature is greedy and TopP outside (0, 1) keeps all ids.
func NewSampler(o SamplerOptions) Sampler {
	if o.Temperature <= 0 {
		return greedySampler{}
	}
	return &randomSampler{opts: o, rng: rand.New(rand.NewPCG(o.Seed, 0x9e3779b97f4a7c15))}
}

// Greedy returns the sampler that always takes the most likely id (the lowest on ties).
func Greedy() Sampler { return greedySampler{} }

type greedySampler struct{}

func (greedySampler) Sample(logits []float32) int { return argmaxF32(logits) }

func argmaxF32(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

type randomSampler struct {
	opts SamplerOptions
	rng  *rand.Rand
	idx  []int
	p    []float64
}

// Sample implements Sampler: softmax(logits/T) restricted to the top-k and top-p candidates,
// renormalised, then one draw.
func (s *randomSampler) Sample(logits []float32) int {
	n := len(logits)
	s.idx = s.idx[:0]
	for i := 0; i < n; i++ {
		s.idx = append(s.idx, i)
	}
	// Most likely first (ties: lower id first), so that top-k and top-p are prefixes.
	sort.SliceStable(s.idx, func(a, b int) bool { return logits[s.idx[a]] > logits[s.idx[b]] })
	keep := n
	if k := s.opts.TopK; k > 0 && k < keep {
		keep = k
	}
	invT := 1 / s.opts.Temperature
	top := float64(logits[s.idx[0]])
	s.p = s.p[:0]
	var sum float64
	for _, i := range s.idx[:keep] {
		e := math.Exp((float64(logits[i]) - top) * invT)
		s.p = append(s.p, e)
		sum += e
	}
	if tp := s.opts.TopP; tp > 0 && tp < 1 {
		var cum float64
		for j, e := range s.p {
			cum += e / sum
			if cum >= tp {
				keep = j + 1
				break
			}
		}
		s.p = s.p[:keep]
		sum = 0
		for _, e := range s.p {
			sum += e
		}
	}
	r := s.rng.Float64() * sum
	for j, e := range s.p {
		if r < e {
			return s.idx[j]
		}
		r -= e
	}
	return s.idx[len(s.p)-1]
}
