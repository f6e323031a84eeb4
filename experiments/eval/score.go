package eval

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Request is one continuation to score after a context, as token ids.
type Request struct {
	Context      []int
	Continuation []int
}

// Score is the log-likelihood of a request's continuation and whether greedy decoding would
// have produced it exactly.
type Score struct {
	LogLik float64
	Greedy bool
}

// Scorer computes the scores of a batch of requests (a model on a device, or a test double).
type Scorer interface {
	Score(reqs []Request) ([]Score, error)
}

// Encoder turns text into token ids (the tokenizer).
type Encoder interface {
	Encode(s string) []int
}

// EncodePair tokenizes a (context, continuation) pair the way lm-evaluation-harness does:
// trailing spaces of the context move to the continuation, the pair is encoded whole, and the
// continuation is what follows the context's own encoding. An empty context becomes the
// end-of-text token (id 0).
func EncodePair(enc Encoder, context, continuation string) Request {
	if n := len(context) - len(strings.TrimRight(context, " ")); n > 0 {
		continuation = context[len(context)-n:] + continuation
		context = context[:len(context)-n]
	}
	if context == "" {
		return Request{Context: []int{0}, Continuation: enc.Encode(continuation)}
	}
	whole := enc.Encode(context + continuation)
	ctx := enc.Encode(context)
	if len(ctx) > len(whole) || !slices.Equal(ctx, whole[:len(ctx)]) {
		// The context's tokens do not prefix the whole: encode the parts separately.
		return Request{Context: ctx, Continuation: enc.Encode(continuation)}
	}
	return Request{Context: ctx, Continuation: whole[len(ctx):]}
}

// Result holds a task's metrics.
type Result struct {
	Task     string  `json:"task"`
	Examples int     `json:"examples"`
	Acc      float64 `json:"acc"`
	AccErr   float64 `json:"acc_stderr"`
	AccNorm  float64 `json:"acc_norm,omitempty"`
	NormErr  float64 `json:"acc_norm_stderr,omitempty"`
	PPL      float64 `json:"perplexity,omitempty"`
	Headline string  `json:"headline"`
	Chance   float64 `json:"chance"`
	Seconds  float64 `json:"seconds"`
}

// Run scores every example of t with the scorer, batchSize requests at a time, calling
// progress (if not nil) after each batch with the number of requests done and the total.
func Run(t *Task, enc Encoder, s Scorer, batchSize int, progress func(done, total int)) (Result, error) {
	start := time.Now()
	if batchSize <= 0 {
		batchSize = 32
	}
	var reqs []Request
	for _, ex := range t.Examples {
		for j := range ex.Contexts {
			reqs = append(reqs, EncodePair(enc, ex.Contexts[j], ex.Continuations[j]))
		}
	}
	scores := make([]Score, 0, len(reqs))
	for lo := 0; lo < len(reqs); lo += batchSize {
		hi := min(lo+batchSize, len(reqs))
		got, err := s.Score(reqs[lo:hi])
		if err != nil {
			return Result{}, fmt.Errorf("task %s: scoring requests %d..%d: %w", t.Name, lo, hi, err)
		}
		if len(got) != hi-lo {
			return Result{}, fmt.Errorf("task %s: scorer returned %d scores for %d requests", t.Name, len(got), hi-lo)
		}
		scores = append(scores, got...)
		if progress != nil {
			progress(hi, len(reqs))
		}
	}
	r := Aggregate(t, scores)
	r.Seconds = time.Since(start).Seconds()
	return r, nil
}

// Aggregate computes the metrics of t from the scores of its requests, in example order then
// choice order.
func Aggregate(t *Task, scores []Score) Result {
	info := Known[t.Name]
	r := Result{Task: t.Name, Examples: len(t.Examples), Headline: info.Headline}
	if r.Headline == "" {
		r.Headline = "acc"
	}
	k := 0
	var hits, normHits, chance, sumLL float64
	for _, ex := range t.Examples {
		n := len(ex.Contexts)
		sc := scores[k : k+n]
		k += n
		if t.Kind == Cloze {
			if sc[0].Greedy {
				hits++
			}
			sumLL += sc[0].LogLik
			continue
		}
		chance += 1 / float64(n)
		best, bestNorm := 0, 0
		for j := 1; j < n; j++ {
			if sc[j].LogLik > sc[best].LogLik {
				best = j
			}
			if perChar(sc[j].LogLik, ex.Continuations[j]) > perChar(sc[bestNorm].LogLik, ex.Continuations[bestNorm]) {
				bestNorm = j
			}
		}
		if best == ex.Gold {
			hits++
		}
		if bestNorm == ex.Gold {
			normHits++
		}
	}
	n := float64(len(t.Examples))
	r.Acc = hits / n
	r.AccErr = stderr(r.Acc, n)
	switch t.Kind {
	case MultipleChoice:
		r.AccNorm = normHits / n
		r.NormErr = stderr(r.AccNorm, n)
		r.Chance = chance / n
	case PartialContext:
		r.Chance = chance / n
	case Cloze:
		r.PPL = math.Exp(-sumLL / n)
	}
	return r
}

// perChar is the log-likelihood per character of the continuation (the harness's acc_norm
// normalisation, by the continuation's length in bytes of UTF-8).
func perChar(ll float64, continuation string) float64 {
	return ll / float64(max(1, len(continuation)))
}

func stderr(p, n float64) float64 {
	if n <= 1 {
		return 0
	}
	return math.Sqrt(p * (1 - p) / (n - 1))
}

// Metrics formats the result's metrics for a log line: acc, then acc_norm for the tasks
// scored by several continuations, or the perplexity for the cloze task (WinoGrande has acc
// alone).
func (r Result) Metrics() string {
	s := fmt.Sprintf("acc %.4f ± %.4f", r.Acc, r.AccErr)
	switch Known[r.Task].Kind {
	case MultipleChoice:
		s += fmt.Sprintf("  acc_norm %.4f ± %.4f", r.AccNorm, r.NormErr)
	case Cloze:
		s += fmt.Sprintf("  perplexity %.4g", r.PPL)
	}
	return s
}

// HeadlineValue is the value of the metric usually quoted for the task (Headline).
func (r Result) HeadlineValue() float64 {
	if r.Headline == "acc_norm" {
		return r.AccNorm
	}
	return r.Acc
}
