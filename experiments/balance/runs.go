package balance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"

	"blackmamba/experiments"
	"blackmamba/experiments/results"
)

// Run is the balance analysis of one trained model together with what its training recorded:
// one entry of a balance experiment's result file.
type Run struct {
	// Label names the run: the training run's label (config name, plus the routing for runs of
	// the routing ablation), or the model name of a plain list of results.
	Label string
	// Routing is the training-time routing (bm.Routing* constants).
	Routing string
	// FinalHeldOut is the last evaluation's held-out loss per domain and FinalHeldOutMean their
	// mean; nil and NaN when the file holds no training (a plain list of results).
	FinalHeldOut     map[string]float64
	FinalHeldOutMean float64
	// Results are the routing statistics on held-out text (per mode and domain), each with
	// Model set to Label.
	Results []Result
	// Records are the training metrics records (tokens per expert, balance and extras such as
	// the Sinkhorn rounds per MoE layer, per record); empty for a plain list of results.
	Records []results.TrainRecord
	// Error says why Results is empty when the analysis failed during training.
	Error string
}

// Find returns the result of routing mode and domain.
func (r Run) Find(mode, domain string) (Result, bool) {
	for _, x := range r.Results {
		if x.Mode == mode && x.Domain == domain {
			return x, true
		}
	}
	return Result{}, false
}

// SinkhornIters returns the mean number of Sinkhorn rounds per MoE layer and training step,
// from the records' "sinkhorn_iters/layer_NN" extras (each record holds the mean over the steps
// since the previous record, so records are weighted by their number of steps). ok is false
// when no record has them (runs not routed by Sinkhorn, or trained before they were recorded).
func (r Run) SinkhornIters() (mean float64, ok bool) {
	var sum, weight float64
	prev := 0
	for _, rec := range r.Records {
		steps := float64(max(rec.Step-prev, 1))
		prev = rec.Step
		for k, v := range rec.Extras {
			if strings.HasPrefix(k, experiments.SinkhornItersPrefix) && !math.IsNaN(v) {
				sum += steps * v
				weight += steps
			}
		}
	}
	if weight == 0 {
		return math.NaN(), false
	}
	return sum / weight, true
}

// AllResults returns the results of every run in order.
func AllResults(runs []Run) []Result {
	var out []Result
	for _, r := range runs {
		out = append(out, r.Results...)
	}
	return out
}

// OverTraining returns the metrics records of each run that has some, keyed by label (the
// input of PlotBalanceOverTraining).
func OverTraining(runs []Run) map[string][]results.TrainRecord {
	out := map[string][]results.TrainRecord{}
	for _, r := range runs {
		if len(r.Records) > 0 {
			out[r.Label] = r.Records
		}
	}
	return out
}

// trainingFile is the part of a training-experiment result (experiments/training.Result) that
// the balance analysis reads.
type trainingFile struct {
	Runs *[]struct {
		Label            string                `json:"label"`
		Config           string                `json:"config"`
		Routing          string                `json:"routing"`
		MoE              bool                  `json:"moe"`
		FinalHeldOut     map[string]float64    `json:"final_held_out"`
		FinalHeldOutMean *float64              `json:"final_held_out_mean"`
		Records          []results.TrainRecord `json:"records"`
		Balance          json.RawMessage       `json:"balance"`
		BalanceError     string                `json:"balance_error"`
	} `json:"runs"`
}

// ReadAny reads the result file of the balance experiment in either of its formats: a
// training-experiment result (what "blackmamba experiment balance" writes: an object whose
// runs carry their balance analysis, metrics records and final held-out loss; runs without
// MoE blocks are left out) or a plain JSON list of Result (WriteJSON), grouped into one Run per
// model. Errors name the file, the run and what is wrong.
func ReadAny(path string) ([]Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("balance: %w", err)
	}
	return ParseAny(path, b)
}

// ParseAny is ReadAny on the contents b of the file name (used in errors).
func ParseAny(name string, b []byte) ([]Run, error) {
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("balance: %s: empty file", name)
	}
	switch trimmed[0] {
	case '[':
		var rs []Result
		if err := json.Unmarshal(trimmed, &rs); err != nil {
			return nil, fmt.Errorf("balance: %s: malformed list of results: %w", name, err)
		}
		if err := checkResults(name, "", rs); err != nil {
			return nil, err
		}
		return groupByModel(rs), nil
	case '{':
		return parseTraining(name, trimmed)
	}
	return nil, fmt.Errorf("balance: %s: want a JSON list of balance results or a training-experiment result object, found %q at the start",
		name, string(trimmed[:min(len(trimmed), 20)]))
}

func parseTraining(name string, b []byte) ([]Run, error) {
	var f trainingFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("balance: %s: malformed training-experiment result: %w", name, err)
	}
	if f.Runs == nil {
		return nil, fmt.Errorf("balance: %s: the object has no \"runs\" field: not a training-experiment result", name)
	}
	var out []Run
	for i, tr := range *f.Runs {
		if !tr.MoE {
			continue
		}
		if tr.Label == "" {
			return nil, fmt.Errorf("balance: %s: run %d has no label", name, i)
		}
		run := Run{Label: tr.Label, Routing: tr.Routing, FinalHeldOut: tr.FinalHeldOut,
			FinalHeldOutMean: math.NaN(), Records: tr.Records, Error: tr.BalanceError}
		if tr.FinalHeldOutMean != nil {
			run.FinalHeldOutMean = *tr.FinalHeldOutMean
		}
		if len(tr.Balance) > 0 && string(tr.Balance) != "null" {
			if err := json.Unmarshal(tr.Balance, &run.Results); err != nil {
				return nil, fmt.Errorf("balance: %s: run %d (%s): malformed balance analysis: %w", name, i, tr.Label, err)
			}
			if err := checkResults(name, fmt.Sprintf("run %d (%s): ", i, tr.Label), run.Results); err != nil {
				return nil, err
			}
			for j := range run.Results {
				run.Results[j].Model = tr.Label
			}
		} else if run.Error == "" {
			run.Error = "no balance analysis recorded"
		}
		out = append(out, run)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("balance: %s: none of the %d runs has MoE blocks", name, len(*f.Runs))
	}
	return out, nil
}

// checkResults reports results whose layers have no counts.
func checkResults(name, where string, rs []Result) error {
	for i, r := range rs {
		for j, l := range r.Layers {
			if len(l.Counts) == 0 {
				return fmt.Errorf("balance: %s: %sresult %d (%s, %s, %s) layer %d: no counts", name, where, i, r.Model, r.Mode, r.Domain, j)
			}
		}
	}
	return nil
}

// groupByModel makes one Run per model of rs, in order of first appearance.
func groupByModel(rs []Result) []Run {
	var out []Run
	index := map[string]int{}
	for _, r := range rs {
		i, ok := index[r.Model]
		if !ok {
			i = len(out)
			index[r.Model] = i
			out = append(out, Run{Label: r.Model, Routing: r.Routing, FinalHeldOutMean: math.NaN()})
		}
		out[i].Results = append(out[i].Results, r)
	}
	return out
}

// AblationRow summarizes one run of the routing ablation. Statistics are over all held-out
// domains (DomainAll); NaN marks what the file does not have.
type AblationRow struct {
	Label, Routing string
	// HeldOut is the final mean held-out loss.
	HeldOut float64
	// CVArgmax and CVTrain are the mean over MoE layers of the coefficient of variation of
	// tokens per expert, with inference (argmax) routing and with the training-time router.
	CVArgmax, CVTrain float64
	// MaxShareArgmax and MaxShareTrain are the largest share of tokens any expert of any layer
	// received, with the same two routings.
	MaxShareArgmax, MaxShareTrain float64
	// SinkhornIters is the mean number of Sinkhorn rounds per layer and step during training.
	SinkhornIters float64
}

// Ablation returns one row per run. For a run trained with argmax the training route is argmax.
func Ablation(runs []Run) []AblationRow {
	var rows []AblationRow
	for _, r := range runs {
		row := AblationRow{Label: r.Label, Routing: r.Routing, HeldOut: r.FinalHeldOutMean}
		row.CVArgmax, row.MaxShareArgmax = modeSummary(r, ModeArgmax)
		train := r.Routing
		if train == "" {
			train = ModeArgmax
		}
		row.CVTrain, row.MaxShareTrain = modeSummary(r, train)
		row.SinkhornIters, _ = r.SinkhornIters()
		rows = append(rows, row)
	}
	return rows
}

// modeSummary returns the mean CV and the largest expert share of the DomainAll result of mode.
func modeSummary(r Run, mode string) (cv, maxShare float64) {
	x, ok := r.Find(mode, DomainAll)
	if !ok || len(x.Layers) == 0 {
		return math.NaN(), math.NaN()
	}
	maxShare = math.Inf(-1)
	for _, l := range x.Layers {
		maxShare = math.Max(maxShare, l.MaxShare)
	}
	return x.MeanCV(), maxShare
}

// AblationMarkdown renders rows as a Markdown table (a dash for missing values), sorted by
// final held-out loss (runs without one last).
func AblationMarkdown(rows []AblationRow) string {
	rows = append([]AblationRow(nil), rows...)
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i].HeldOut, rows[j].HeldOut
		if math.IsNaN(a) || math.IsNaN(b) {
			return !math.IsNaN(a) && math.IsNaN(b)
		}
		return a < b
	})
	num := func(v float64, format string) string {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return "–"
		}
		return fmt.Sprintf(format, v)
	}
	var sb strings.Builder
	sb.WriteString("| run | routing | final held-out loss | mean CV (argmax) | mean CV (training route) | max expert share (argmax) | max expert share (training route) | Sinkhorn rounds |\n")
	sb.WriteString("|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Label, r.Routing, num(r.HeldOut, "%.4f"),
			num(r.CVArgmax, "%.3f"), num(r.CVTrain, "%.3f"), num(r.MaxShareArgmax, "%.3f"), num(r.MaxShareTrain, "%.3f"),
			num(r.SinkhornIters, "%.2f"))
	}
	return sb.String()
}
