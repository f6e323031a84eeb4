// Package results holds the typed results that the experiment drivers write and that the
// plots package reads: one type per experiment output, with readers that report the file and
// line of malformed input. It has no dependency on GoMLX, so plotting and notebooks can load
// results without building the model.
package results

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
)

// TrainRecord is one line of a training run's metrics file (JSON Lines). A record summarizes
// the steps since the previous record.
type TrainRecord struct {
	// Step is the number of optimizer updates done so far (1-based after the first update).
	Step int `json:"step"`
	// Tokens is the cumulative number of training tokens (predicted positions) seen.
	Tokens int64 `json:"tokens"`
	// FLOPs is the cumulative training compute: Tokens × the model's training FLOPs per token.
	FLOPs float64 `json:"flops"`
	// Loss is the mean training loss over the steps since the previous record.
	Loss float64 `json:"loss"`
	// HeldOut is the held-out loss per domain, present on evaluation steps only.
	HeldOut map[string]float64 `json:"held_out,omitempty"`
	// LR is the learning rate used by the last step of the record.
	LR float64 `json:"lr"`
	// GradNorm is the mean global gradient norm (before clipping) since the previous record.
	GradNorm float64 `json:"grad_norm"`
	// Extras holds the mean of the model's scalar extra outputs (e.g. an auxiliary loss).
	Extras map[string]float64 `json:"extras,omitempty"`
	// ExpertCounts holds, per MoE layer, the tokens routed to each expert summed over the
	// steps since the previous record.
	ExpertCounts map[string][]float64 `json:"expert_counts,omitempty"`
	// BalanceCV is, per MoE layer, the coefficient of variation (std/mean) of ExpertCounts:
	// 0 for a perfectly balanced layer.
	BalanceCV map[string]float64 `json:"balance_cv,omitempty"`
	// TokensPerSec is the training throughput since the previous record (steps only, without
	// evaluation and checkpoint time).
	TokensPerSec float64 `json:"tokens_per_sec"`
	// WallSeconds is the cumulative wall time of the run, across resumes.
	WallSeconds float64 `json:"wall_s"`
}

// ReadTrainLog reads a metrics file written by the training loop. Errors name the file and the
// line number.
func ReadTrainLog(path string) ([]TrainRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading training log: %w", err)
	}
	defer f.Close()
	var recs []TrainRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<26)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(b) == 0 {
			continue
		}
		var r TrainRecord
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s:%d: malformed training record: %w", path, line, err)
		}
		if n := len(recs); n > 0 && r.Step <= recs[n-1].Step {
			return nil, fmt.Errorf("%s:%d: step %d does not follow step %d", path, line, r.Step, recs[n-1].Step)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", path, line+1, err)
	}
	return recs, nil
}

// CoefficientOfVariation returns std/mean of counts (population standard deviation), the
// balance measure of an MoE layer's tokens per expert. It returns NaN for an empty slice or a
// zero mean.
func CoefficientOfVariation(counts []float64) float64 {
	if len(counts) == 0 {
		return math.NaN()
	}
	var mean float64
	for _, c := range counts {
		mean += c
	}
	mean /= float64(len(counts))
	if mean == 0 {
		return math.NaN()
	}
	var ss float64
	for _, c := range counts {
		ss += (c - mean) * (c - mean)
	}
	return math.Sqrt(ss/float64(len(counts))) / mean
}

// FLOPsToReach returns the cumulative training FLOPs of the first record whose loss is at or
// below threshold, using the held-out loss of domain if domain is not empty (records without
// it are skipped) and the training loss otherwise. ok is false if the run never reached it.
func FLOPsToReach(recs []TrainRecord, threshold float64, domain string) (flops float64, ok bool) {
	for _, r := range recs {
		loss := r.Loss
		if domain != "" {
			v, found := r.HeldOut[domain]
			if !found {
				continue
			}
			loss = v
		}
		if loss <= threshold {
			return r.FLOPs, true
		}
	}
	return 0, false
}

// Domains returns the sorted held-out domain names that appear in recs.
func Domains(recs []TrainRecord) []string {
	set := map[string]bool{}
	for _, r := range recs {
		for d := range r.HeldOut {
			set[d] = true
		}
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// ReadParts reads the result files named in list (comma-separated, spaces around names
// ignored), in order, with read: the parts that MergeParts combines.
func ReadParts[P any](list string, read func(path string) (P, error)) ([]P, error) {
	var parts []P
	for _, path := range strings.Split(list, ",") {
		p, err := read(strings.TrimSpace(path))
		if err != nil {
			return nil, err
		}
		parts = append(parts, p)
	}
	return parts, nil
}

// MergeParts combines the items of a result run in parts (e.g. architectures on different GPUs):
// every part's settings, as described by settings, must equal the first part's, and the items
// are concatenated in part order, a later item replacing an earlier one with the same key. what
// names the results in errors.
func MergeParts[P, T any](what string, parts []P, settings func(P) string, items func(P) []T, key func(T) string) ([]T, error) {
	if len(parts) == 0 {
		return nil, fmt.Errorf("%s: nothing to merge", what)
	}
	var out []T
	index := map[string]int{}
	for i, p := range parts {
		if settings(p) != settings(parts[0]) {
			return nil, fmt.Errorf("%s: result %d has settings (%s) unlike result 1 (%s)", what, i+1, settings(p), settings(parts[0]))
		}
		for _, item := range items(p) {
			if j, ok := index[key(item)]; ok {
				out[j] = item
				continue
			}
			index[key(item)] = len(out)
			out = append(out, item)
		}
	}
	return out, nil
}
