package bm

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
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
		return &SamplerOptionError{"Temperature", o.Temperature, "want a finite value >= 0 (0 is greedy)"}
	case o.TopK < 0:
		return &SamplerOptionError{"TopK", o.TopK, "want >= 0 (0 keeps all ids)"}
	case math.IsNaN(o.TopP) || o.TopP < 0 || o.TopP > 1:
		return &SamplerOptionError{"TopP", o.TopP, "want a value in (0, 1], or 0 for no nucleus filter"}
	}
	return nil
}

// SamplerOptionError is the error of SamplerOptions.Validate: the field, its value and the
// range it must be in (so that a command line can name its own flag instead).
type SamplerOptionError struct {
	Field string // "Temperature", "TopK" or "TopP"
	Value any
	Want  string
}

func (e *SamplerOptionError) Error() string {
	return fmt.Sprintf("bm: sampler %s %v: %s", e.Field, e.Value, e.Want)
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
	opts  SamplerOptions
	rng   *rand.Rand
	e     []float64 // exp((logit - max logit) / T) per id
	b     []uint16  // bucket per id (see sampleBuckets)
	count [sampleBuckets]int
	mass  [sampleBuckets]float64
	part  []int
}

// The sampler orders ids by logit without sorting the vocabulary: each id goes into a bucket
// by its scaled log-probability d = (logit - max) / T ≤ 0, bucket ⌊-d·sampleBucketsPerUnit⌋
// (the last bucket also takes everything below, and NaN). Buckets are ordered as the logits
// are, so the ids of the buckets below some bucket are exactly the most likely ones; only the
// bucket in which the top-k or top-p boundary falls is sorted (by logit, then lower id).
const (
	sampleBuckets        = 2048
	sampleBucketsPerUnit = 16
)

// Sample implements Sampler: softmax(logits/T) restricted to the top-k and top-p candidates,
// renormalised, then one draw. The set kept is the one a full sort by logit (ties: lower id
// first) would give; the draw walks it in id order, the boundary bucket's ids last.
func (s *randomSampler) Sample(logits []float32) int {
	cut, part := s.keep(logits)
	var sum float64
	for b := 0; b < cut; b++ {
		sum += s.mass[b]
	}
	for _, i := range part {
		sum += s.e[i]
	}
	r := s.rng.Float64() * sum
	last := -1
	if cut > 0 {
		for i, b := range s.b[:len(logits)] {
			if int(b) < cut {
				if r < s.e[i] {
					return i
				}
				r -= s.e[i]
				last = i
			}
		}
	}
	for _, i := range part {
		if r < s.e[i] {
			return i
		}
		r -= s.e[i]
		last = i
	}
	if last < 0 { // nothing kept has a weight (every logit NaN or -Inf)
		return argmaxF32(logits)
	}
	return last // rounding at the end of the walk
}

// keep computes the weights and buckets of logits and returns the candidate set: every id of
// the buckets below cut, and part, the most likely ids of bucket cut in order.
func (s *randomSampler) keep(logits []float32) (cut int, part []int) {
	n := len(logits)
	if cap(s.e) < n {
		s.e, s.b = make([]float64, n), make([]uint16, n)
	}
	s.e, s.b = s.e[:n], s.b[:n]
	clear(s.count[:])
	clear(s.mass[:])
	top := float64(logits[argmaxF32(logits)])
	invT := 1 / s.opts.Temperature
	for i, l := range logits {
		d := (float64(l) - top) * invT
		e, b := 0.0, sampleBuckets-1
		if !math.IsNaN(d) {
			e = math.Exp(d)
			if x := -d * sampleBucketsPerUnit; x < sampleBuckets-1 {
				b = int(x)
			}
		}
		s.e[i], s.b[i] = e, uint16(b)
		s.count[b]++
		s.mass[b] += e
	}
	cut = sampleBuckets // all kept
	if k := s.opts.TopK; k > 0 && k < n {
		before := 0
		for b := range sampleBuckets {
			if before+s.count[b] >= k {
				cut, part = b, s.sortedBucket(logits, b)[:k-before]
				break
			}
			before += s.count[b]
		}
	}
	if tp := s.opts.TopP; tp > 0 && tp < 1 {
		var total float64
		for b := 0; b < cut; b++ {
			total += s.mass[b]
		}
		for _, i := range part {
			total += s.e[i]
		}
		target := tp * total
		var cum float64
		for b := 0; b < cut; b++ {
			if cum+s.mass[b] >= target { // the nucleus ends in bucket b
				cut, part = b, s.sortedBucket(logits, b)
				break
			}
			cum += s.mass[b]
		}
		for j, i := range part {
			if cum += s.e[i]; cum >= target {
				part = part[:j+1]
				break
			}
		}
	}
	return cut, part
}

// sortedBucket returns the ids of bucket b, most likely first (ties: lower id first).
func (s *randomSampler) sortedBucket(logits []float32, b int) []int {
	s.part = s.part[:0]
	for i, bi := range s.b {
		if int(bi) == b {
			s.part = append(s.part, i)
		}
	}
	slices.SortFunc(s.part, func(x, y int) int {
		if c := cmp.Compare(logits[y], logits[x]); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	return s.part
}
