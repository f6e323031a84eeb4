package bm

import "math"

// SelectiveScanReference is the selective scan of the Mamba mixer computed sequentially in
// float64 on the host, the reference the graph versions are tested against (SPEC §2 steps 6–7
// without the D skip):
//
//	h_t[c,n] = exp(Δ_t[c]·A[c,n])·h_{t−1}[c,n] + Δ_t[c]·x_t[c]·B_t[n],  h_{−1} = 0,
//	y_t[c]   = Σ_n C_t[n]·h_t[c,n].
//
// Shapes: x, delta [B][T][D]; A [D][N]; Bm, Cm [B][T][N]. It returns y [B][T][D] and the final
// state hT [B][D][N]. It panics if the shapes disagree.
func SelectiveScanReference(x, delta [][][]float64, A [][]float64, Bm, Cm [][][]float64) (y [][][]float64, hT [][][]float64) {
	batch := len(x)
	if len(delta) != batch || len(Bm) != batch || len(Cm) != batch {
		panic("bm.SelectiveScanReference: x, delta, Bm and Cm must have the same batch size")
	}
	numD := len(A)
	numN := 0
	if numD > 0 {
		numN = len(A[0])
	}
	y = make([][][]float64, batch)
	hT = make([][][]float64, batch)
	for b := range batch {
		T := len(x[b])
		if len(delta[b]) != T || len(Bm[b]) != T || len(Cm[b]) != T {
			panic("bm.SelectiveScanReference: x, delta, Bm and Cm must have the same length T")
		}
		h := make([][]float64, numD)
		for c := range h {
			h[c] = make([]float64, numN)
		}
		y[b] = make([][]float64, T)
		for t := range T {
			if len(x[b][t]) != numD || len(delta[b][t]) != numD || len(Bm[b][t]) != numN || len(Cm[b][t]) != numN {
				panic("bm.SelectiveScanReference: inner dimensions must be D for x and delta and N for Bm and Cm")
			}
			y[b][t] = make([]float64, numD)
			for c := range numD {
				dt := delta[b][t][c]
				dx := dt * x[b][t][c]
				sum := 0.0
				for n := range numN {
					h[c][n] = math.Exp(dt*A[c][n])*h[c][n] + dx*Bm[b][t][n]
					sum += Cm[b][t][n] * h[c][n]
				}
				y[b][t][c] = sum
			}
		}
		hT[b] = h
	}
	return y, hT
}
