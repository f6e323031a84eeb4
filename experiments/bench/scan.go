package bench

import (
	"github.com/gomlx/gomlx/backends"

	"blackmamba/bm"
	"blackmamba/xla/kerneltrace"
)

// Scan times the selective scan variants at one shape (forward, and forward+backward), first
// checking every variant against the float64 reference on the same backend when check is set
// (the check compiles each variant twice more; `blackmamba selfcheck` runs it too).
func Scan(backend backends.Backend, shape bm.ScanShape, variants []bm.ScanOptions, reps int, check bool) ([]Row, error) {
	if check {
		if err := bm.CheckScan(backend); err != nil {
			return nil, err
		}
	}
	regions := map[string]region{} // traced regions by BenchScan's label
	if Trace != nil {
		var from uint64
		bm.ScanRegion = func(label string, begin bool, runs int) {
			if begin {
				from = traceNow()
				return
			}
			regions[label] = region{from: from, to: traceNow(), calls: runs}
		}
		defer func() { bm.ScanRegion = nil }()
	}
	results := bm.BenchScan(backend, shape, variants, reps)
	var ks []kerneltrace.Kernel
	var traceErr error
	if Trace != nil {
		if ks, traceErr = Trace.Collect(); traceErr == nil {
			traceErr = kerneltrace.Check(ks)
		}
	}
	var rows []Row
	for _, r := range results {
		fwd := Row{Bench: "scan-fwd", Variant: r.Variant, Shape: r.Shape.String(), Ms: r.ForwardMs, MinMs: r.ForwardMinMs,
			Reps: reps, CompileS: r.ForwardCompileS, PeakBytes: r.PeakBytes, Err: r.Err,
			Extra: map[string]float64{"floor_MB": float64(r.ForwardFloorBytes) / 1e6, "GB/s": r.ForwardGBs,
				"state_MB": float64(shape.StateBytes()) / 1e6}}
		fb := Row{Bench: "scan-fwd+bwd", Variant: r.Variant, Shape: r.Shape.String(), Ms: r.ForwardBackwardMs, MinMs: r.ForwardBackwardMinMs,
			Reps: reps, CompileS: r.ForwardBackwardCompileS, PeakBytes: r.PeakBytes, Err: r.Err,
			Extra: map[string]float64{"floor_MB": float64(r.ForwardBackwardFloorBytes) / 1e6, "GB/s": r.ForwardBackwardGBs}}
		if reg, ok := regions[r.Variant+" forward"]; ok {
			traceRowFrom(&fwd, ks, traceErr, reg)
		}
		if reg, ok := regions[r.Variant+" forward+backward"]; ok {
			traceRowFrom(&fb, ks, traceErr, reg)
		}
		rows = append(rows, fwd, fb)
	}
	return rows, nil
}
