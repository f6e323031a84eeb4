package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"text/tabwriter"

	"blackmamba/experiments/results"
	"blackmamba/experiments/train"
)

func init() {
	register(&command{
		name:    "compare-runs",
		summary: "compare the per-record training losses and gradient norms of two runs (e.g. 1 and 2 devices)",
		run:     runCompareRuns,
	})
}

func runCompareRuns(fs *flag.FlagSet, args []string) error {
	tol := fs.Float64("tol", 1e-3, "largest relative difference of the losses (|a-b| / max(1, |a|)) accepted")
	steps := fs.Int("steps", 0, "compare only the records up to this step (0: all common records)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: blackmamba compare-runs [flags] RUN_A RUN_B\n\n"+
			"RUN_A and RUN_B are run directories (holding %s) or metrics files. Prints one line per\n"+
			"record and fails when a training or held-out loss differs by more than -tol.\n\nFlags:\n", train.MetricsFile)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return fmt.Errorf("want two runs, got %d arguments", fs.NArg())
	}
	var logs [2][]results.TrainRecord
	for i, p := range fs.Args()[:2] {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			p = filepath.Join(p, train.MetricsFile)
		}
		var err error
		if logs[i], err = results.ReadTrainLog(p); err != nil {
			return err
		}
	}
	worst, err := compareRuns(os.Stdout, logs[0], logs[1], *steps)
	if err != nil {
		return err
	}
	if worst > *tol {
		return fmt.Errorf("largest relative loss difference %.3g exceeds -tol %g", worst, *tol)
	}
	return nil
}

// compareRuns prints the records of a and b that have the same step (up to maxStep when > 0)
// side by side and returns the largest relative difference |a−b|/max(1,|a|) of the training
// losses and of the held-out losses. Two logs with no step in common are an error.
func compareRuns(w io.Writer, a, b []results.TrainRecord, maxStep int) (worst float64, err error) {
	byStep := map[int]results.TrainRecord{}
	for _, r := range b {
		byStep[r.Step] = r
	}
	rel := func(x, y float64) float64 { return math.Abs(x-y) / math.Max(1, math.Abs(x)) }
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "step\tloss A\tloss B\trel diff\tgrad norm A\tgrad norm B\theld-out rel diff")
	n := 0
	for _, ra := range a {
		rb, ok := byStep[ra.Step]
		if !ok || (maxStep > 0 && ra.Step > maxStep) {
			continue
		}
		n++
		d := rel(ra.Loss, rb.Loss)
		if math.IsNaN(d) {
			d = math.Inf(1)
		}
		worst = math.Max(worst, d)
		held := "-"
		if len(ra.HeldOut) > 0 || len(rb.HeldOut) > 0 {
			var hd float64
			for k, va := range ra.HeldOut {
				vb, ok := rb.HeldOut[k]
				if !ok {
					return worst, fmt.Errorf("step %d: held-out %q in the first run only", ra.Step, k)
				}
				hd = math.Max(hd, rel(va, vb))
			}
			if len(rb.HeldOut) != len(ra.HeldOut) {
				return worst, fmt.Errorf("step %d: held-out domains %d and %d differ", ra.Step, len(ra.HeldOut), len(rb.HeldOut))
			}
			worst = math.Max(worst, hd)
			held = fmt.Sprintf("%.2e", hd)
		}
		fmt.Fprintf(tw, "%d\t%.6f\t%.6f\t%.2e\t%.4g\t%.4g\t%s\n", ra.Step, ra.Loss, rb.Loss, d, ra.GradNorm, rb.GradNorm, held)
	}
	if err := tw.Flush(); err != nil {
		return worst, err
	}
	if n == 0 {
		return worst, fmt.Errorf("the two runs have no record of the same step in common")
	}
	fmt.Fprintf(w, "%d records compared; largest relative loss difference %.3g\n", n, worst)
	return worst, nil
}
