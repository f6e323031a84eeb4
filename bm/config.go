package bm

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Block kinds of a pattern (SPEC.md §1).
const (
	KindMamba     = 'r' // Mamba mixer block
	KindAttention = 'a' // causal self-attention block (baselines)
	KindMLP       = '1' // dense gated MLP block
	KindMoE       = 'E' // MoE block; the pattern writes its expert count (e.g. "8")
)

// Routing algorithms for the MoE blocks during training. Inference always uses argmax.
const (
	RoutingSinkhorn        = "sinkhorn"         // BlackMamba's Sinkhorn: cost exp(2ℓ), d1 = 1/(E·Σ_t C)
	RoutingSinkhornVanilla = "sinkhorn-vanilla" // Megatron's Sinkhorn: cost exp(ℓ), d1 = 1
	RoutingArgmax          = "argmax"           // plain top-1, no balancing
	RoutingSwitch          = "switch"           // softmax top-1 with a Switch-style load-balancing loss
)

// Block is one residual block of the stack.
type Block struct {
	Kind    byte // KindMamba, KindAttention, KindMLP or KindMoE
	Experts int  // number of experts for KindMoE, 0 otherwise
}

// String returns the block as written in a pattern ("r", "a", "1", "8").
func (b Block) String() string {
	if b.Kind == KindMoE {
		return strconv.Itoa(b.Experts)
	}
	return string(b.Kind)
}

// Config is the single source of truth for a model: its block pattern and sizes.
// Presets are returned by Preset; a JSON file with the same fields also works (LoadConfig).
type Config struct {
	Name string `json:"name"`
	// Pattern is the block sequence: one character per block ("r8r8", "a1a1"), or comma-separated
	// entries for expert counts above 9 ("r,16,r,16").
	Pattern string `json:"pattern"`

	Dim        int    `json:"d_model"`     // d: model width
	Vocab      int    `json:"vocab"`       // embedding rows (padded vocabulary)
	VocabReal  int    `json:"vocab_real"`  // ids >= VocabReal are padding: masked in the loss, never sampled
	StateSize  int    `json:"state_size"`  // N
	ConvKernel int    `json:"conv_kernel"` // K
	Expand     int    `json:"expand"`      // D = Expand·d
	DtRank     int    `json:"dt_rank"`     // R; 0 means ceil(d/16)
	FFN        int    `json:"ffn_hidden"`  // F: hidden size of each expert and of the dense MLP
	Heads      int    `json:"heads"`       // attention heads (attention blocks only)
	MaxSeqLen  int    `json:"max_seq_len"` // training context; default KV-cache size
	Activation string `json:"activation"`  // "silu" (default) or "gelu" for experts and dense MLPs

	Routing         string  `json:"routing"`           // training-time expert choice, see Routing* constants
	SinkhornMaxIter int     `json:"sinkhorn_max_iter"` // maximum Sinkhorn rounds; 0: automatic (SinkhornRounds)
	SinkhornTol     float64 `json:"sinkhorn_tol"`      // stop when mean|Δd1| < tol
	SwitchAuxWeight float64 `json:"switch_aux_weight"` // weight of the load-balancing loss for RoutingSwitch

	NormEps  float64 `json:"norm_eps"`  // RMSNorm and final LayerNorm epsilon
	RopeBase float64 `json:"rope_base"` // rotary base for attention
	InitStd  float64 `json:"init_std"`  // embedding (and linear) init std
	DtMin    float64 `json:"dt_min"`
	DtMax    float64 `json:"dt_max"`
	DtFloor  float64 `json:"dt_floor"`

	// ComputeDType is "float32" or "bfloat16": the dtype of matmuls. The residual stream,
	// norms, scan state and router stay float32.
	ComputeDType string `json:"compute_dtype"`
	// ScanChunk is the chunk length of the parallel selective scan (0 picks DefaultScanChunk, 8).
	ScanChunk int `json:"scan_chunk"`
	// ScanMaxTokens, when > 0, has the parallel scan process the batch in pieces of at most
	// this many tokens (whole sequences, at least one per piece; ScanOptions.MaxBatch): the
	// same values, smaller kernels for the compiler. 0 scans the whole batch at once.
	ScanMaxTokens int `json:"scan_max_tokens,omitempty"`
	// ScanBackward is the parallel scan's hand-written backward pass (ScanOptions.Backward):
	// "" or "fused" (the default, the most precise: dΔ and dA to about 1e-7 relative at 4,096
	// steps, and on an H200 the fastest with the default chunks of 8), "twochain" (1e-5 and 2e-4
	// there; faster than the fused one on an H200 only with chunks of 16, and on the scan alone)
	// or "stacked".
	ScanBackward string `json:"scan_backward,omitempty"`
	// StepRows, when larger than the decoding batch, has each weight product of a decoding
	// step (StepProduct) run on that many rows: the batch's rows followed by zero rows, whose
	// results are dropped. The values are the same; the point is the GPU compiler, which
	// rewrites a product of a single row with a weight matrix of fewer than 10M elements into
	// an elementwise product and a reduction, where two rows stay a matrix multiplication.
	// 0 or 1: no padding.
	StepRows int `json:"step_rows,omitempty"`
	// StepFuse lists, comma-separated, extra rearrangements of the batch-1 decoding step with
	// the folded weight copies (FoldStepWeights), each aimed at one kernel per block on a GPU:
	// "gate" folds the Mamba output gate silu(z) and the D skip term into the state update's sum
	// over the states; "residual" makes the residual add part of each block's last product (one
	// more column holding the residual); "router" computes the router logits of an MoE block
	// that follows a Mamba block inside the Mamba block's two products (copies of its in_proj
	// and out_proj with the router's rows, which FoldStepWeights makes), so that the router has
	// no product of its own; "ring" keeps each Mamba block's conv and SSM states in one tensor,
	// the conv's inputs as a ring (mambaRingStep), so that the state
	// update writes both and, with the gate inside the output's sum, is the same kernel as that
	// sum (a Mamba block followed by an MoE block then leaves its residual add to that block's
	// last product); "wide", with "ring", pads that state to 32 columns (mambaRingWidth) and
	// reads copies of x_proj and A with the zeros in place (FoldStepWeights); "align" pads the
	// residual's column of a product that adds it ("residual") with zero columns to a row length
	// that is a multiple of 8, so that the compiler can read the weights' rows in wide vectors;
	// "dtrow" computes the Mamba block's dt_proj as a sum along the rows of a transposed copy
	// (FoldStepWeights) instead of down the columns of the weight; "nodefer", with "ring", has a
	// Mamba block followed by an MoE block add the residual in its own out_proj after all, so
	// that the MoE block's products read the sum rather than adding it as they read; "head"
	// computes the final LayerNorm's mean and mean square in one reduction of the two stacked,
	// so that the compiler does not merge the mean into the last block's product (and read its
	// weights twice). The values are the same up to rounding. Empty: none.
	StepFuse string `json:"step_fuse,omitempty"`
}

// StepFusions lists the values StepFuse may hold.
var StepFusions = []string{"gate", "residual", "router", "ring", "wide", "align", "dtrow", "head", "nodefer"}

// StepFusionNeeds maps each fusion of StepFusions that works only with another one to that
// one, and says why.
var StepFusionNeeds = map[string]struct{ Fusion, Why string }{
	"wide":    {"ring", "wide pads the ring state"},
	"nodefer": {"ring", "nodefer undoes ring's deferred residual"},
}

// stepFuses reports whether c.StepFuse names fusion.
func (c Config) stepFuses(fusion string) bool {
	return slices.Contains(strings.Split(c.StepFuse, ","), fusion)
}

// NeoX vocabulary sizes (SPEC.md §1).
const (
	NeoXVocabReal   = 50277
	NeoXVocabPadded = 50304
)

func base(name, pattern string, d, f int) Config {
	return Config{
		Name: name, Pattern: pattern, Dim: d, Vocab: NeoXVocabPadded, VocabReal: NeoXVocabReal,
		StateSize: 16, ConvKernel: 4, Expand: 2, FFN: f, Heads: max(1, d/64), MaxSeqLen: 2048,
		Activation: "silu", Routing: RoutingSinkhorn, SinkhornMaxIter: 0, SinkhornTol: 1e-4,
		SwitchAuxWeight: 0.01, NormEps: 1e-5, RopeBase: 10000, InitStd: 0.02,
		DtMin: 0.001, DtMax: 0.1, DtFloor: 1e-4, ComputeDType: "float32",
	}
}

// repeat returns pair repeated n times ("r8", 3 → "r8r8r8").
func repeat(pair string, n int) string { return strings.Repeat(pair, n) }

// presets builds the named configurations. Baselines keep d and F of their BlackMamba and
// pick the number of block pairs that matches its active (or total) parameter count.
func presets() map[string]Config {
	m := map[string]Config{}
	add := func(c Config) { m[c.Name] = c }
	type family struct {
		prefix string
		bm     Config
	}
	tiny := base("tiny", repeat("r8", 2), 32, 64)
	tiny.Heads = 2
	tiny.MaxSeqLen = 256
	small := base("small", repeat("r8", 8), 512, 1536)
	small.Heads = 8
	b15 := base("1.5b", repeat("r8", 15), 1152, 3072)
	b15.Heads = 18
	b28 := base("2.8b", repeat("r8", 18), 1472, 3872)
	b28.Heads = 23
	for _, fam := range []family{{"tiny", tiny}, {"small", small}, {"1.5b", b15}, {"2.8b", b28}} {
		add(fam.bm)
		pairs := len(fam.bm.Blocks()) / 2
		for _, v := range []struct{ suffix, pair string }{
			{"mamba", "r1"}, {"transformer", "a1"}, {"transformer-moe", "a8"},
		} {
			c := fam.bm
			c.Name = fam.prefix + "-" + v.suffix
			_, target := fam.bm.ParamCounts()
			c.Pattern = repeat(v.pair, matchPairs(c, v.pair, pairs, target, false))
			add(c)
		}
		c := fam.bm
		c.Name = fam.prefix + "-mamba-total"
		total, _ := fam.bm.ParamCounts()
		c.Pattern = repeat("r1", matchPairs(c, "r1", pairs, total, true))
		add(c)
	}
	return m
}

// matchPairs returns the number of repetitions of pair whose active (or total) parameter count
// is closest to target.
func matchPairs(c Config, pair string, start int, target int64, total bool) int {
	best, bestDiff := start, int64(math.MaxInt64)
	for n := 1; n <= 8*start+8; n++ {
		c.Pattern = repeat(pair, n)
		t, a := c.ParamCounts()
		v := a
		if total {
			v = t
		}
		diff := v - target
		if diff < 0 {
			diff = -diff
		}
		if diff < bestDiff {
			best, bestDiff = n, diff
		}
	}
	return best
}

// PresetNames lists the preset names in sorted order.
func PresetNames() []string {
	var names []string
	for k := range presets() {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// Preset returns a copy of the named preset configuration.
func Preset(name string) (Config, error) {
	c, ok := presets()[name]
	if !ok {
		return Config{}, fmt.Errorf("bm: unknown config preset %q (known: %s)", name, strings.Join(PresetNames(), ", "))
	}
	return c, nil
}

// MustPreset is Preset that panics on an unknown name (for tests and examples).
func MustPreset(name string) Config {
	c, err := Preset(name)
	if err != nil {
		panic(err)
	}
	return c
}

// LoadConfig returns a preset by name, or reads a JSON config file when nameOrPath ends in
// ".json". JSON fields left out take the defaults of the "small" preset. The result is validated.
func LoadConfig(nameOrPath string) (Config, error) {
	if !strings.HasSuffix(nameOrPath, ".json") {
		c, err := Preset(nameOrPath)
		if err != nil {
			return c, err
		}
		return c, c.Validate()
	}
	data, err := os.ReadFile(nameOrPath)
	if err != nil {
		return Config{}, fmt.Errorf("bm: reading config: %w", err)
	}
	c := MustPreset("small")
	c.Name = strings.TrimSuffix(nameOrPath, ".json")
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("bm: config %s: %w", nameOrPath, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("bm: config %s: %w", nameOrPath, err)
	}
	return c, nil
}

// Blocks parses the pattern. It panics on an invalid pattern: call Validate first on
// untrusted configs.
func (c Config) Blocks() []Block {
	blocks, err := ParsePattern(c.Pattern)
	if err != nil {
		panic(err)
	}
	return blocks
}

// ParsePattern parses a block pattern: "r8r8", "a1a1", or comma-separated "r,16,r,16".
func ParsePattern(p string) ([]Block, error) {
	var entries []string
	if strings.Contains(p, ",") {
		for _, e := range strings.Split(p, ",") {
			entries = append(entries, strings.TrimSpace(e))
		}
	} else {
		for _, r := range p {
			entries = append(entries, string(r))
		}
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("empty block pattern")
	}
	blocks := make([]Block, 0, len(entries))
	for i, e := range entries {
		switch e {
		case "r":
			blocks = append(blocks, Block{Kind: KindMamba})
		case "a":
			blocks = append(blocks, Block{Kind: KindAttention})
		case "1":
			blocks = append(blocks, Block{Kind: KindMLP})
		default:
			n, err := strconv.Atoi(e)
			if err != nil || n < 2 || n > 256 {
				return nil, fmt.Errorf("block pattern %q: entry %d is %q; want r (Mamba), a (attention), 1 (dense MLP) or an expert count 2..256 (MoE)", p, i, e)
			}
			blocks = append(blocks, Block{Kind: KindMoE, Experts: n})
		}
	}
	return blocks, nil
}

// Inner returns D = Expand·d, the Mamba inner width.
func (c Config) Inner() int { return c.Expand * c.Dim }

// Rank returns the dt rank R (ceil(d/16) unless set).
func (c Config) Rank() int {
	if c.DtRank > 0 {
		return c.DtRank
	}
	return (c.Dim + 15) / 16
}

// HeadDim returns the attention head width.
func (c Config) HeadDim() int { return c.Dim / c.Heads }

// NumMoE returns the number of MoE blocks.
func (c Config) NumMoE() int {
	n := 0
	for _, b := range c.Blocks() {
		if b.Kind == KindMoE {
			n++
		}
	}
	return n
}

// Validate rejects impossible configurations with an error naming the field.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("config %q: %s", c.Name, fmt.Sprintf(format, args...))
	}
	blocks, err := ParsePattern(c.Pattern)
	if err != nil {
		return bad("%v", err)
	}
	if c.Dim <= 0 {
		return bad("d_model must be positive, got %d", c.Dim)
	}
	if c.Vocab <= 0 || c.VocabReal <= 0 || c.VocabReal > c.Vocab {
		return bad("need 0 < vocab_real (%d) <= vocab (%d)", c.VocabReal, c.Vocab)
	}
	needMamba, needFFN, needAttn := false, false, false
	for _, b := range blocks {
		switch b.Kind {
		case KindMamba:
			needMamba = true
		case KindMoE, KindMLP:
			needFFN = true
		case KindAttention:
			needAttn = true
		}
	}
	if needMamba {
		if c.StateSize <= 0 || c.ConvKernel <= 0 || c.Expand <= 0 || c.DtRank < 0 {
			return bad("Mamba blocks need positive state_size (%d), conv_kernel (%d), expand (%d) and dt_rank >= 0 (%d)",
				c.StateSize, c.ConvKernel, c.Expand, c.DtRank)
		}
		if c.DtMin <= 0 || c.DtMax < c.DtMin || c.DtFloor < 0 {
			return bad("need 0 < dt_min (%g) <= dt_max (%g) and dt_floor >= 0", c.DtMin, c.DtMax)
		}
	}
	if needFFN && c.FFN <= 0 {
		return bad("MoE and MLP blocks need ffn_hidden > 0, got %d", c.FFN)
	}
	if needAttn {
		if c.Heads <= 0 || c.Dim%c.Heads != 0 {
			return bad("attention needs heads > 0 dividing d_model: d_model=%d heads=%d", c.Dim, c.Heads)
		}
		if c.HeadDim()%2 != 0 {
			return bad("rotary positions need an even head width, got %d", c.HeadDim())
		}
	}
	if c.MaxSeqLen <= 0 {
		return bad("max_seq_len must be positive, got %d", c.MaxSeqLen)
	}
	switch c.Activation {
	case "silu", "gelu":
	default:
		return bad("activation %q: want silu or gelu", c.Activation)
	}
	switch c.Routing {
	case RoutingSinkhorn, RoutingSinkhornVanilla, RoutingArgmax, RoutingSwitch:
	default:
		return bad("routing %q: want %s, %s, %s or %s", c.Routing, RoutingSinkhorn, RoutingSinkhornVanilla, RoutingArgmax, RoutingSwitch)
	}
	if c.SinkhornMaxIter < 0 || c.SinkhornTol <= 0 {
		return bad("need sinkhorn_max_iter >= 0 (%d; 0 is automatic) and sinkhorn_tol > 0 (%g)", c.SinkhornMaxIter, c.SinkhornTol)
	}
	if c.NormEps <= 0 {
		return bad("norm_eps must be positive, got %g", c.NormEps)
	}
	switch c.ComputeDType {
	case "float32", "bfloat16":
	default:
		return bad("compute_dtype %q: want float32 or bfloat16", c.ComputeDType)
	}
	if c.ScanChunk < 0 {
		return bad("scan_chunk must be >= 0, got %d", c.ScanChunk)
	}
	if c.ScanMaxTokens < 0 {
		return bad("scan_max_tokens must be >= 0 (0: no split), got %d", c.ScanMaxTokens)
	}
	switch c.ScanBackward {
	case "", BackwardFused, BackwardTwoChain, BackwardStacked:
	default:
		return bad("scan_backward %q: want %q (the default), %q or %q", c.ScanBackward, BackwardFused, BackwardTwoChain, BackwardStacked)
	}
	if c.StepRows < 0 || c.StepRows > MaxStepRows {
		return bad("step_rows must be between 0 and %d (0: no padding), got %d", MaxStepRows, c.StepRows)
	}
	if err := CheckStepFuse(c.StepFuse); err != nil {
		return bad("%v", err)
	}
	return nil
}

// CheckStepFuse returns an error naming s and its unknown entry unless s is empty or a
// comma-separated list of StepFusions.
func CheckStepFuse(s string) error {
	if s == "" {
		return nil
	}
	fs := strings.Split(s, ",")
	for _, f := range fs {
		if !slices.Contains(StepFusions, f) {
			return fmt.Errorf("step_fuse %q: unknown fusion %q (want a comma-separated list of %s)", s, f, strings.Join(StepFusions, ", "))
		}
	}
	for _, f := range fs {
		if need, ok := StepFusionNeeds[f]; ok && !slices.Contains(fs, need.Fusion) {
			return fmt.Errorf("step_fuse %q: %s, it needs %s too", s, need.Why, need.Fusion)
		}
	}
	return nil
}

// MambaBlockParams returns the parameters of one Mamba block, its RMSNorm included.
func (c Config) MambaBlockParams() int64 {
	d, D, N, K, R := int64(c.Dim), int64(c.Inner()), int64(c.StateSize), int64(c.ConvKernel), int64(c.Rank())
	return d + // norm
		2*D*d + // in_proj
		D*K + D + // conv1d weight and bias
		(R+2*N)*D + // x_proj
		D*R + D + // dt_proj weight and bias
		D*N + D + // A_log, D
		d*D // out_proj
}

// ExpertParams returns the parameters of one gated-MLP expert (also the dense MLP's size).
func (c Config) ExpertParams() int64 { return 3 * int64(c.FFN) * int64(c.Dim) }

// AttentionBlockParams returns the parameters of one attention block, its RMSNorm included:
// q, k, v and output projections, no biases.
func (c Config) AttentionBlockParams() int64 {
	d := int64(c.Dim)
	return d + 4*d*d
}

// ParamCounts returns the total and the active (per token) parameter counts.
func (c Config) ParamCounts() (total, active int64) {
	d := int64(c.Dim)
	emb := int64(c.Vocab) * d
	total, active = emb+2*d, emb+2*d // embedding (tied head) + final LayerNorm
	for _, b := range c.Blocks() {
		switch b.Kind {
		case KindMamba:
			total += c.MambaBlockParams()
			active += c.MambaBlockParams()
		case KindAttention:
			total += c.AttentionBlockParams()
			active += c.AttentionBlockParams()
		case KindMLP:
			total += d + c.ExpertParams()
			active += d + c.ExpertParams()
		case KindMoE:
			e := int64(b.Experts)
			router := d*e + e
			total += d + router + e*c.ExpertParams()
			active += d + router + c.ExpertParams()
		}
	}
	return total, active
}
