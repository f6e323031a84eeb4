package bm

// FLOPs per token, counted from the operations the model runs (a multiply-add is 2 FLOPs; an
// elementwise op, exp or log included, is 1 FLOP; gathers and copies are 0).

// MambaFLOPsPerToken returns the forward FLOPs per token of one Mamba mixer as Mamba runs it:
//
//	in_proj 2·d·2D, conv 2·K·D, SiLU 4·D, x_proj 2·D·(R+2N), dt_proj 2·R·D, bias 1·D,
//	softplus 3·D, scan 7·N·D + D (Δ·A, exp, decay·h, ·B, add, and C·h as a multiply-add per
//	state, plus Δ·x once per channel), D-skip 2·D, gate 5·D (SiLU and product), out_proj 2·D·d
//
// which sums to 6·D·d + 2·D·K + D·(11·N + 4·R) + 16·D: Zyphra's cookbook formula
// D(11N + 4R + 1) + 6Dd + 2DK plus 15·D for the activations it leaves out. The chunked scan
// does extra work per token (the intra-chunk correction) that this count, like the cookbook's,
// leaves out: it is the recurrence's cost, independent of how it is parallelised.
func MambaFLOPsPerToken(cfg Config) float64 {
	d, D := float64(cfg.Dim), float64(cfg.Inner())
	N, K, R := float64(cfg.StateSize), float64(cfg.ConvKernel), float64(cfg.Rank())
	return 6*D*d + 2*D*K + D*(11*N+4*R) + 16*D
}

// FLOPsPerToken returns the FLOPs per token of a forward pass over sequences of seqLen tokens,
// and of a training step (forward and backward; the backward of every op is counted as twice
// its forward, so training = 3·forward).
//
// Forward: per block, its RMSNorm (4·d) and residual add (d) plus the block (MambaFLOPsPerToken,
// MoEFLOPsPerToken with one active expert, MLPFLOPsPerToken, or AttentionFLOPsPerToken at the
// causal average of (seqLen+1)/2 keys); then the final LayerNorm (8·d) and the tied head
// (2·d·V over the padded vocabulary). The embedding lookup is a gather (0 FLOPs) and the loss's
// softmax (≈ 5·V) is not included.
func (c Config) FLOPsPerToken(seqLen int) (forward, training float64) {
	d := float64(c.Dim)
	for _, b := range c.Blocks() {
		forward += 5 * d
		switch b.Kind {
		case KindMamba:
			forward += MambaFLOPsPerToken(c)
		case KindMoE:
			forward += MoEFLOPsPerToken(c, b.Experts)
		case KindMLP:
			forward += MLPFLOPsPerToken(c)
		case KindAttention:
			forward += AttentionFLOPsPerToken(c, float64(seqLen+1)/2)
		}
	}
	forward += 8*d + 2*d*float64(c.Vocab)
	return forward, 3 * forward
}
