package experiments

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"blackmamba/bm"
	"blackmamba/bm/weights"
	"blackmamba/xla"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// LoadedModel is a model read from a weights path, with its variables in a context.
type LoadedModel struct {
	Cfg  bm.Config
	Ctx  *context.Context
	Path string
}

// SetActivation replaces cfg's expert activation by activation, "silu" or "gelu"; an empty
// activation keeps the config's.
func SetActivation(cfg *bm.Config, activation string) error {
	switch activation {
	case "":
	case "silu", "gelu":
		cfg.Activation = activation
	default:
		return fmt.Errorf("activation %q: want silu or gelu", activation)
	}
	return nil
}

// LoadModel reads a model with weights.LoadAny (a model directory, a .safetensors checkpoint,
// or a released pytorch_model.bin with its config.json beside it), converts the floats to
// float32 and puts them into a fresh context. activation, when not empty, overrides the
// config's expert activation ("silu" or "gelu").
func LoadModel(path, activation string) (*LoadedModel, error) {
	cfg, ts, err := weights.LoadAny(path, weights.ImportOptions{DType: dtypes.Float32})
	if err != nil {
		return nil, err
	}
	if err := SetActivation(&cfg, activation); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ctx := context.New()
	if err := weights.IntoContext(ctx, ts); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &LoadedModel{Cfg: cfg, Ctx: ctx, Path: path}, nil
}

// numVariables counts the variables of ctx.
func numVariables(ctx *context.Context) int {
	n := 0
	for range ctx.IterVariables() {
		n++
	}
	return n
}

// newVariable returns the name of a variable of ctx not in known.
func newVariable(ctx *context.Context, known map[string]bool) string {
	for v := range ctx.IterVariables() {
		if !known[v.ScopeAndName()] {
			return v.ScopeAndName()
		}
	}
	return "?"
}

// GenerateOptions configure Generate.
type GenerateOptions struct {
	MaxTokens int               // tokens to generate at most
	Sampler   bm.SamplerOptions // Temperature <= 0 is greedy
	StopEOS   bool              // stop after generating the end-of-text id
	EOS       int               // the end-of-text id (0 for the NeoX tokenizer)
	MaxLen    int               // KV-cache length for attention blocks; prompt+MaxTokens when 0
	// StepWeights is the layout of the weights the decoding steps read (bm.StepLayout, made by
	// bm.SetStepLayout in the model's context on first use; another layout later replaces the
	// copies): "inout" (the model's own), "transposed" (bm.TransposeStepWeights' copies, as
	// much memory again as the matmul weights), "folded" (bm.FoldStepWeights: those copies with
	// the norm gains folded into the blocks' first products) or "auto"/"" (StepLayoutFor:
	// transposed on the pure-Go backend, where they made a step 1.3-2.4 times faster, folded on
	// an NVIDIA GPU, when the copies take at most a quarter of the machine's memory, or of the
	// GPU's; inout elsewhere).
	StepWeights string
	// Unroll is the number of greedy steps per executable call (bm.GreedyDecoder.Unroll); the
	// tokens still reach the callback one by one, k at a time; 0 or 1: one step per call.
	// Sampled generation runs one step per call. On an H200 four steps per call took the 1.5b
	// step with the transposed weights from 2.21 to 1.57 ms per token, but its graphs took about
	// 15 s longer to compile: worth it for generations of tens of thousands of tokens.
	Unroll int
	// StepFuse is bm.Config.StepFuse for the generation (the folded layout's batch-1 step
	// rearrangements of bm.StepFusions, comma-separated), which needs StepWeights to resolve to
	// folded; "auto" is DefaultStepFuse when it does and none otherwise; "" and "none": none.
	StepFuse string
	// DType is the dtype of the matmuls and of the stored matmul weights: "float32",
	// "bfloat16" (the weights are converted in place by bm.CastWeights, which the LoadedModel
	// keeps: a later float32 generation on it is an error) or "auto"/"" (bfloat16 on an NVIDIA
	// GPU, where the decoding steps read half the bytes, else the config's compute dtype).
	DType string
	// Resident runs greedy generation through bm.GreedyDecoder.GenerateResidentStream: every
	// input of a call stays on the device, on XLA written over by the call's outputs, and each
	// call's tokens can be copied back at its end (see StreamInterval); on XLA the calls are
	// launched ahead of the device unless SyncCalls. On an H200 the 1.5b latency sweep took
	// 0.474-0.495 ms per token this way at one step per call with DefaultStepFuse (0.58-0.64
	// with "residual" alone), against 1.31-1.71 ms with the held steps at 4. Sampled generation
	// and generations of one token ignore it.
	Resident bool
	// StreamInterval is bm.GreedyDecoder.StreamInterval for the resident steps: the token
	// history is copied to the host at most this often (and at the end), the tokens since the
	// last copy handed over together; 0 copies after every call. On an H200 generate took about
	// 0.2 ms per token more than the latency benchmark at 8 steps per call, which copies once at
	// the end; the copies after each call are a likely cause, not a measured one.
	StreamInterval time.Duration
	// SyncCalls is bm.GreedyDecoder.SyncCalls for the resident steps: each call waits for the
	// device before the next is launched (by default, on XLA, calls are launched ahead).
	SyncCalls bool
	// WarmUp compiles and runs the generation's graphs once on a dummy prompt of the same
	// length before the clock starts (greedy: the prefill and every step graph the generation
	// will call, bm.GreedyDecoder.WarmUpGreedy, or WarmUpResident with Resident; sampled: the
	// prefill and the first step graph),
	// so that GenerateStats.TimeToFirst and TokensPerSecond time the generation itself and
	// GenerateStats.WarmUp the compilation. Without it, the first calls compile their graphs
	// inside the timed generation.
	WarmUp bool
}

// CopiesFit reports whether transposed weight copies of the given bytes fit the automatic
// choice's budget: at most a quarter of memory (true when memory is unknown, 0 or less).
func CopiesFit(copyBytes, memory int64) bool {
	return memory <= 0 || copyBytes <= memory/4
}

// StepMemory is the memory the automatic step-weight choice weighs the copies against: the
// GPU's on an NVIDIA GPU, else the host's (bytes; 0 or less when unknown).
func StepMemory(backend backends.Backend) int64 {
	if xla.IsCUDA(backend) {
		return xla.DeviceMemoryTotal()
	}
	return xla.HostMemory()
}

// ParseStepWeights checks a GenerateOptions.StepWeights value: "auto" or "" (auto set), or the
// name of a bm.StepLayout. An unknown value is an error naming it and the values (without the
// option's name, which the caller prefixes).
func ParseStepWeights(stepWeights string) (layout bm.StepLayout, auto bool, err error) {
	if stepWeights == "" || stepWeights == "auto" {
		return "", true, nil
	}
	if layout, err = bm.ParseStepLayout(stepWeights); err != nil {
		return "", false, fmt.Errorf("%q: want auto, inout, transposed or folded", stepWeights)
	}
	return layout, false, nil
}

// StepLayoutFor resolves GenerateOptions.StepWeights for backend and copies of copyBytes (the
// model's bm.StepWeightBytes): the layout named, or for "auto" and "" folded on an NVIDIA GPU
// and transposed on the pure-Go backend when the copies fit (CopiesFit with StepMemory), and
// inout otherwise. An unknown value is an error naming it. (On an H200 the 1.5b step took
// 2.06 ms folded against 2.22 ms transposed, one step per call, 231 kernels against 276; on
// the pure-Go backend the folded step's float32 row products are written out in full, so the
// transposed copies stay its choice.)
func StepLayoutFor(stepWeights string, backend backends.Backend, copyBytes int64) (bm.StepLayout, error) {
	layout, auto, err := ParseStepWeights(stepWeights)
	if err != nil {
		return "", fmt.Errorf("step weights %w", err)
	}
	if !auto {
		return layout, nil
	}
	if !CopiesFit(copyBytes, StepMemory(backend)) {
		return bm.StepInOut, nil
	}
	switch {
	case xla.IsCUDA(backend):
		return bm.StepFolded, nil
	case xla.IsPureGo(backend):
		return bm.StepTransposed, nil
	}
	return bm.StepInOut, nil
}

// CheckStepFuse checks a GenerateOptions.StepFuse value on its own: "auto", "none", "" or a
// bm.Config.StepFuse value.
func CheckStepFuse(stepFuse string) error {
	if stepFuse == "auto" || stepFuse == "none" {
		return nil
	}
	return bm.CheckStepFuse(stepFuse)
}

// DefaultStepFuse is the bm.Config.StepFuse that "auto" gives the folded step weights: the
// fastest measured on an H200 (1.5b, bf16, batch 1, one resident step per call launched
// ahead, 256 tokens, experiments/results/h200/2026-11-29-align/). On one machine
// "residual,router,ring" took 0.523 ms per token, with "align" 0.513, with "dtrow" 0.521,
// with "head" 0.530 (its fastest pass 0.514), with those three and a fourth option since
// removed 0.508. On another, "residual,router,ring,head,align,dtrow" took 0.496, with
// "nodefer" 0.485, with "wide" 0.487, with both 0.478. Earlier (2026-11-29-ring/) "residual"
// alone took 0.576; before that "residual" had taken the step from 2.13 to 1.77 ms waiting
// for each call, where "gate" made it slower. Architectures without Mamba blocks take only
// "residual", "align" and "head" from it.
const DefaultStepFuse = "residual,router,ring,head,align,dtrow,nodefer,wide"

// StepFuseFor resolves GenerateOptions.StepFuse (or latency -step-fuse) for the step layout: the bm.Config.StepFuse
// value to generate with.
func StepFuseFor(stepFuse string, layout bm.StepLayout) (string, error) {
	if err := CheckStepFuse(stepFuse); err != nil {
		return "", fmt.Errorf("step fuse %q: %w", stepFuse, err)
	}
	switch {
	case stepFuse == "" || stepFuse == "none":
		return "", nil
	case stepFuse == "auto" && layout == bm.StepFolded:
		return DefaultStepFuse, nil
	case stepFuse == "auto":
		return "", nil
	case layout != bm.StepFolded:
		return "", fmt.Errorf("step fuse %q needs the folded step weights, not %s", stepFuse, layout)
	}
	return stepFuse, nil
}

// GenerateStats describes a generation.
type GenerateStats struct {
	PromptTokens    int
	WarmUp          time.Duration // GenerateOptions.WarmUp's compiling and running the graphs once; 0 without it
	Tokens          []int         // generated ids
	TimeToFirst     time.Duration // from the call to the first generated token (prefill included)
	Total           time.Duration
	TokensPerSecond float64 // after the first token: (len(Tokens)-1) / (Total - TimeToFirst)
	// StepLayout and StepFuse are what the steps ran with, GenerateOptions.StepWeights and
	// StepFuse resolved (auto made concrete; StepFuse "" is none).
	StepLayout bm.StepLayout
	StepFuse   string
	DType      string // the compute dtype it ran with (GenerateOptions.DType resolved)
	Resident   bool   // the greedy steps ran resident (GenerateOptions.Resident applied)
}

// CheckGenerateDType checks a GenerateOptions.DType value.
func CheckGenerateDType(dtype string) error {
	switch dtype {
	case "", "auto", "float32", "bfloat16":
		return nil
	}
	return fmt.Errorf("dtype %q: want float32, bfloat16 or auto", dtype)
}

// generateDType resolves GenerateOptions.DType for m on backend: the compute dtype to generate
// with. An unknown value is an error naming it.
func generateDType(dtype string, backend backends.Backend, m *LoadedModel) (string, error) {
	if err := CheckGenerateDType(dtype); err != nil {
		return "", err
	}
	switch {
	case dtype == "float32" || dtype == "bfloat16":
		return dtype, nil
	case xla.IsCUDA(backend) || m.Cfg.ComputeDType == "bfloat16":
		return "bfloat16", nil
	}
	return "float32", nil
}

// castModel makes m's stored matmul weights match the compute dtype: converted to bfloat16 for
// "bfloat16" (step copies made from the float32 weights are dropped first, to be made again);
// for "float32", weights already converted are an error, as their precision is lost.
func castModel(backend backends.Backend, m *LoadedModel, dtype string) error {
	stored := dtypes.Float32
	for v := range m.Ctx.IterVariables() {
		if bm.IsCastWeight(v.Scope(), v.Name()) {
			stored = v.Shape().DType
			break
		}
	}
	switch {
	case dtype == "float32" && stored != dtypes.Float32:
		return fmt.Errorf("dtype float32: the weights of %s were converted to %s by an earlier generation; load the model again", m.Path, stored)
	case dtype == "bfloat16" && stored != dtypes.BFloat16:
		if bm.StepLayoutOf(m.Ctx) != bm.StepInOut {
			if _, err := bm.DropStepWeights(m.Ctx); err != nil {
				return err
			}
		}
		if _, err := bm.CastWeights(backend, m.Ctx, dtypes.BFloat16); err != nil {
			return err
		}
	}
	m.Cfg.ComputeDType = dtype
	return nil
}

// Generate continues prompt with the model m on backend, calling onToken (if not nil) with
// each generated id as soon as it is drawn. Prompt ids must be below the model's real vocabulary.
// It fails if the model's graph needs a variable that the loaded weights lack.
func Generate(backend backends.Backend, m *LoadedModel, prompt []int, o GenerateOptions, onToken func(id int)) (GenerateStats, error) {
	st := GenerateStats{PromptTokens: len(prompt)}
	if len(prompt) == 0 {
		return st, fmt.Errorf("generate: empty prompt")
	}
	for i, id := range prompt {
		if id < 0 || id >= m.Cfg.VocabReal {
			return st, fmt.Errorf("generate: prompt token %d is id %d, outside the model's vocabulary %d", i, id, m.Cfg.VocabReal)
		}
	}
	maxLen := o.MaxLen
	if maxLen <= 0 {
		maxLen = len(prompt) + max(o.MaxTokens, 1)
	}
	dtype, err := generateDType(o.DType, backend, m)
	if err != nil {
		return st, fmt.Errorf("generate: %w", err)
	}
	if err := castModel(backend, m, dtype); err != nil {
		return st, fmt.Errorf("generate: %w", err)
	}
	st.DType = dtype
	layout, err := StepLayoutFor(o.StepWeights, backend, bm.StepWeightBytes(m.Ctx))
	if err != nil {
		return st, fmt.Errorf("generate: %w", err)
	}
	cfg := m.Cfg
	if cfg.StepFuse, err = StepFuseFor(o.StepFuse, layout); err != nil {
		return st, fmt.Errorf("generate: %w", err)
	}
	st.StepLayout, st.StepFuse = layout, cfg.StepFuse
	// Copies of another layout left by an earlier call are replaced (inout drops them).
	if _, err = bm.SetStepLayout(backend, m.Ctx, layout); err != nil {
		return st, fmt.Errorf("generate: %w", err)
	}
	before := numVariables(m.Ctx)
	known := map[string]bool{}
	for v := range m.Ctx.IterVariables() {
		known[v.ScopeAndName()] = true
	}
	d, err := bm.NewDecoder(backend, m.Ctx, cfg, 1, maxLen)
	if err != nil {
		return st, err
	}
	var missing error
	generate := func(onToken func(int) bool) ([]int, error) {
		return d.Generate(prompt, o.MaxTokens, bm.NewSampler(o.Sampler), onToken)
	}
	warmUp := func() error { // the prefill and the first step, on a prompt of zeros
		if _, err := d.Prefill([][]int{make([]int, len(prompt))}); err != nil {
			return err
		}
		_, err := d.Step([]int{0})
		return err
	}
	if o.Sampler.Temperature <= 0 {
		// Greedy: the argmax on the device, only the token copied back at each step.
		g := bm.NewGreedyDecoder(d)
		g.Unroll = o.Unroll
		g.StreamInterval = o.StreamInterval
		g.SyncCalls = o.SyncCalls
		defer g.Release()
		generate = func(onToken func(int) bool) ([]int, error) { return g.GenerateStream(prompt, o.MaxTokens, onToken) }
		warmUp = func() error { return g.WarmUpGreedy(len(prompt), max(o.MaxTokens, 1)) }
		if o.Resident && o.MaxTokens >= 2 {
			st.Resident = true
			generate = func(onToken func(int) bool) ([]int, error) {
				return g.GenerateResidentStream(prompt, o.MaxTokens, onToken)
			}
			warmUp = func() error { return g.WarmUpResident(len(prompt), o.MaxTokens) }
		}
	}
	if o.WarmUp {
		t0 := time.Now()
		if err := warmUp(); err != nil {
			return st, fmt.Errorf("generate: warm-up: %w", err)
		}
		st.WarmUp = time.Since(t0)
		// The graphs are built by now: any new variable was missing from the weights.
		if n := numVariables(m.Ctx); n != before {
			return st, fmt.Errorf("generate: the weights of %s lack %d variable(s) the model needs (e.g. %s)", m.Path, n-before, newVariable(m.Ctx, known))
		}
	}
	start := time.Now()
	_, err = generate(func(id int) bool {
		if len(st.Tokens) == 0 {
			st.TimeToFirst = time.Since(start)
			// The graphs are built by now: any new variable was missing from the weights.
			if n := numVariables(m.Ctx); n != before {
				missing = fmt.Errorf("generate: the weights of %s lack %d variable(s) the model needs (e.g. %s)", m.Path, n-before, newVariable(m.Ctx, known))
				return false
			}
		}
		st.Tokens = append(st.Tokens, id)
		if onToken != nil {
			onToken(id)
		}
		return !(o.StopEOS && id == o.EOS)
	})
	st.Total = time.Since(start)
	if missing != nil {
		return st, missing
	}
	if err != nil {
		return st, err
	}
	if n := len(st.Tokens); n > 1 && st.Total > st.TimeToFirst {
		st.TokensPerSecond = float64(n-1) / (st.Total - st.TimeToFirst).Seconds()
	}
	return st, nil
}

// TextStreamer writes the text of a growing id sequence as ids arrive: it decodes the whole
// sequence each time and writes the new suffix, holding back an incomplete UTF-8 sequence at the
// end until the bytes that complete it arrive (or Flush).
type TextStreamer struct {
	W      io.Writer
	Decode func(ids []int) []byte // bytes of the ids (a tokenizer's DecodeBytes)
	ids    []int
	sent   int // bytes written
}

// Add appends id and writes the newly completed text.
func (s *TextStreamer) Add(id int) error {
	s.ids = append(s.ids, id)
	b := s.Decode(s.ids)
	end := len(b)
	// Hold back a trailing incomplete rune (at most 3 bytes).
	for k := 1; k <= 3 && k <= len(b); k++ {
		c := b[len(b)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(b[len(b)-k:]) {
				end = len(b) - k
			}
			break
		}
	}
	return s.write(b, end)
}

// Flush writes whatever is held back.
func (s *TextStreamer) Flush() error {
	b := s.Decode(s.ids)
	return s.write(b, len(b))
}

func (s *TextStreamer) write(b []byte, end int) error {
	if end <= s.sent {
		return nil
	}
	_, err := s.W.Write([]byte(strings.ToValidUTF8(string(b[s.sent:end]), "\uFFFD")))
	s.sent = end
	return err
}
