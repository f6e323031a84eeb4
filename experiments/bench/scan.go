package bench

import (
	"github.com/gomlx/gomlx/backends"

	"blackmamba/bm"
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
	var rows []Row
	for _, r := range bm.BenchScan(backend, shape, variants, reps) {
		fwd := Row{Bench: "scan-fwd", Variant: r.Variant, Shape: r.Shape.String(), Ms: r.ForwardMs, MinMs: r.ForwardMinMs,
			Reps: reps, CompileS: r.ForwardCompileS, PeakBytes: r.PeakBytes, Err: r.Err,
			Extra: map[string]float64{"floor_MB": float64(r.ForwardFloorBytes) / 1e6, "GB/s": r.ForwardGBs,
				"state_MB": float64(shape.StateBytes()) / 1e6}}
		fb := Row{Bench: "scan-fwd+bwd", Variant: r.Variant, Shape: r.Shape.String(), Ms: r.ForwardBackwardMs, MinMs: r.ForwardBackwardMinMs,
			Reps: reps, CompileS: r.ForwardBackwardCompileS, PeakBytes: r.PeakBytes, Err: r.Err,
			Extra: map[string]float64{"floor_MB": float64(r.ForwardBackwardFloorBytes) / 1e6, "GB/s": r.ForwardBackwardGBs}}
		rows = append(rows, fwd, fb)
	}
	return rows, nil
}
