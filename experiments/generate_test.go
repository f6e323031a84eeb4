package experiments

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/bm"
	"blackmamba/bm/weights"
	"blackmamba/xla"
)

const fixtureDir = "../bm/weights/testdata/fixture"

func cpuBackend(t *testing.T) backends.Backend {
	t.Helper()
	b, err := backends.NewWithConfig(xla.CPUConfig) // the pure-Go CPU backend
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loadFixture loads the test weights (bm/weights/testdata/fixture), failing the test on error.
func loadFixture(t *testing.T) *LoadedModel {
	t.Helper()
	m, err := LoadModel(fixtureDir, "")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestGenerateFixture(t *testing.T) {
	backend := cpuBackend(t)
	m := loadFixture(t)
	prompt := []int{1, 2, 3, 17, 400}
	gen := func(o bm.SamplerOptions) []int {
		var streamed []int
		st, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 6, Sampler: o}, func(id int) { streamed = append(streamed, id) })
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Tokens) != 6 || !slices.Equal(st.Tokens, streamed) {
			t.Fatalf("generated %v, streamed %v: want 6 equal tokens", st.Tokens, streamed)
		}
		return st.Tokens
	}
	// Seeded sampling is reproducible. The fixture's random weights make the next-token
	// distribution very peaked (it repeats the last token), so a high temperature is needed for
	// the draws to differ between seeds.
	for _, o := range []bm.SamplerOptions{
		{Temperature: 30, Seed: 7},
		{Temperature: 30, TopK: 50, TopP: 0.9, Seed: 3},
	} {
		a, b := gen(o), gen(o)
		if !slices.Equal(a, b) {
			t.Errorf("options %+v: two runs gave %v and %v", o, a, b)
		}
		o.Seed++
		if c := gen(o); slices.Equal(a, c) {
			t.Errorf("options %+v: seeds %d and %d both gave %v", o, o.Seed-1, o.Seed, a)
		}
	}
	// Greedy decoding picks the argmax of Model.Forward's logits at every position.
	greedy := gen(bm.SamplerOptions{})
	seq := append(append([]int(nil), prompt...), greedy[:len(greedy)-1]...)
	in := make([]int32, len(seq))
	for i, id := range seq {
		in[i] = int32(id)
	}
	model, _ := bm.New(m.Cfg)
	out, err := context.ExecOnce(backend, m.Ctx.Reuse(), func(ctx *context.Context, tok *Node) *Node {
		return model.Forward(ctx, tok, bm.ForwardOptions{}).Logits
	}, tensors.FromFlatDataAndDimensions(in, 1, len(in)))
	if err != nil {
		t.Fatal(err)
	}
	logits := tensors.MustCopyFlatData[float32](out)
	V := m.Cfg.Vocab
	for k, tok := range greedy {
		p := len(prompt) - 1 + k
		row := logits[p*V : p*V+m.Cfg.VocabReal]
		best := 0
		for i, x := range row {
			if x > row[best] {
				best = i
			}
		}
		if best != tok {
			t.Errorf("greedy token %d is %d, Forward's argmax is %d (logits %.5f vs %.5f)", k, tok, best, row[tok], row[best])
		}
	}
	// The layout of the weights the steps read does not change the tokens (auto is transposed
	// on this backend; inout drops the copies again).
	for _, layout := range []string{"inout", "transposed", "folded", "transposed", "inout"} {
		st, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 6, StepWeights: layout}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(st.Tokens, greedy) {
			t.Errorf("step weights %s: %v, want %v", layout, st.Tokens, greedy)
		}
	}
	// Four greedy steps per call: the same tokens, and a stop at EOS in the middle of a call.
	st, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 6, Unroll: 4}, nil)
	if err != nil || !slices.Equal(st.Tokens, greedy) {
		t.Errorf("4 steps per call: %v, %v; want %v", st.Tokens, err, greedy)
	}
	if st, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 6, Unroll: 4, StopEOS: true, EOS: greedy[2]}, nil); err != nil || !slices.Equal(st.Tokens, greedy[:slices.Index(greedy, greedy[2])+1]) {
		t.Errorf("4 steps per call, EOS %d: %v, %v; want %v", greedy[2], st.Tokens, err, greedy[:slices.Index(greedy, greedy[2])+1])
	}
	// The resident steps: the same tokens, one or four steps per call, and the stop at EOS
	// inside a call; one token is the prefill's alone, without them.
	for _, unroll := range []int{1, 4} {
		st, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 6, Unroll: unroll, Resident: true, WarmUp: true}, nil)
		if err != nil || !slices.Equal(st.Tokens, greedy) || !st.Resident {
			t.Errorf("resident, %d steps per call: %v, %v (resident %v); want %v", unroll, st.Tokens, err, st.Resident, greedy)
		}
		eos := greedy[2]
		want := greedy[:slices.Index(greedy, eos)+1]
		if st, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 6, Unroll: unroll, Resident: true, StopEOS: true, EOS: eos}, nil); err != nil || !slices.Equal(st.Tokens, want) {
			t.Errorf("resident, %d steps per call, EOS %d: %v, %v; want %v", unroll, eos, st.Tokens, err, want)
		}
	}
	if st, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 1, Resident: true}, nil); err != nil || !slices.Equal(st.Tokens, greedy[:1]) || st.Resident {
		t.Errorf("resident, one token: %v, %v (resident %v); want %v from the prefill", st.Tokens, err, st.Resident, greedy[:1])
	}
	if StepMemory(backend) != xla.HostMemory() {
		t.Errorf("pure-Go backend: StepMemory %d, want the host's %d", StepMemory(backend), xla.HostMemory())
	}
	if _, err := Generate(backend, m, prompt, GenerateOptions{MaxTokens: 2, StepWeights: "columns"}, nil); err == nil || !strings.Contains(err.Error(), `"columns"`) {
		t.Errorf("unknown step weights: error %v", err)
	}
	if n := bm.StepWeightBytes(m.Ctx); n <= 0 || !CopiesFit(n, 4*n) || CopiesFit(n, 4*n-1) || !CopiesFit(n, 0) {
		t.Errorf("StepWeightBytes %d: CopiesFit wrong at a quarter of the memory", n)
	}
	for _, c := range []struct {
		layout string
		want   bool
	}{{"", true}, {"auto", true}, {"inout", false}, {"transposed", true}, {"folded", true}} {
		if got, err := StepLayoutFor(c.layout, backend, 1); err != nil || (got != bm.StepInOut) != c.want {
			t.Errorf("StepLayoutFor(%q, pure-Go backend) = %v, %v; want copies: %v", c.layout, got, err, c.want)
		}
	}
	if got, _ := StepLayoutFor("auto", backend, 1); got != bm.StepTransposed {
		t.Errorf("StepLayoutFor(auto, pure-Go backend) = %v, want transposed", got)
	}
	// Stop at EOS: with EOS set to the first greedy token, one token comes out.
	st, err = Generate(backend, m, prompt, GenerateOptions{MaxTokens: 6, StopEOS: true, EOS: greedy[0]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.Tokens, greedy[:1]) {
		t.Errorf("with EOS %d got %v, want %v", greedy[0], st.Tokens, greedy[:1])
	}
}

func TestGenerateErrors(t *testing.T) {
	backend := cpuBackend(t)
	m := loadFixture(t)
	if _, err := Generate(backend, m, []int{1, 600}, GenerateOptions{MaxTokens: 2}, nil); err == nil ||
		!strings.Contains(err.Error(), "id 600, outside the model's vocabulary 512") {
		t.Errorf("out-of-vocabulary prompt: got %v", err)
	}
	// Weights lacking a variable: the error names it instead of initialising it at random.
	cfg, ts, err := weights.LoadAny(fixtureDir, weights.ImportOptions{DType: dtypes.Float32})
	if err != nil {
		t.Fatal(err)
	}
	const drop = "/decoder/final_layernorm/weight"
	if _, ok := ts[drop]; !ok {
		t.Fatalf("fixture has no tensor %s", drop)
	}
	delete(ts, drop)
	for _, warm := range []bool{false, true} {
		ctx := context.New()
		if err := weights.IntoContext(ctx, ts); err != nil {
			t.Fatal(err)
		}
		_, err = Generate(backend, &LoadedModel{Cfg: cfg, Ctx: ctx, Path: "fixture"}, []int{1, 2}, GenerateOptions{MaxTokens: 2, WarmUp: warm}, nil)
		if err == nil || !strings.Contains(err.Error(), drop) {
			t.Errorf("missing variable (warm-up %v): got %v, want an error naming %s", warm, err, drop)
		}
	}
}

// TestGenerateWarmUp checks that GenerateOptions.WarmUp changes no token: greedy at one and four
// steps per call, held and resident, and seeded sampling give the same tokens with and without
// it, and only the warm-up reports a warm-up time.
func TestGenerateWarmUp(t *testing.T) {
	backend := cpuBackend(t)
	m := loadFixture(t)
	prompt := []int{5, 9, 300, 2}
	for _, o := range []GenerateOptions{
		{MaxTokens: 7},
		{MaxTokens: 7, Unroll: 4},
		{MaxTokens: 7, Unroll: 4, Resident: true},
		{MaxTokens: 7, Sampler: bm.SamplerOptions{Temperature: 30, TopP: 0.9, Seed: 5}},
	} {
		var toks [2][]int
		for i, warm := range []bool{false, true} {
			o.WarmUp = warm
			st, err := Generate(backend, m, prompt, o, nil)
			if err != nil {
				t.Fatalf("%+v: %v", o, err)
			}
			if (st.WarmUp > 0) != warm {
				t.Errorf("%+v: warm-up time %v", o, st.WarmUp)
			}
			toks[i] = st.Tokens
		}
		if len(toks[0]) != 7 || !slices.Equal(toks[0], toks[1]) {
			t.Errorf("%+v: tokens %v without the warm-up, %v with it", o, toks[0], toks[1])
		}
	}
}

// TestGenerateReportsSteps checks that GenerateStats names the step layout and fusion the
// steps ran with: "auto" resolved to residual with the folded copies and to none with the
// transposed ones or the weights as stored, an explicit choice kept.
func TestGenerateReportsSteps(t *testing.T) {
	backend := cpuBackend(t)
	m := loadFixture(t)
	for _, tc := range []struct {
		weights, fuse string
		layout        bm.StepLayout
		want          string
	}{
		{"folded", "auto", bm.StepFolded, DefaultStepFuse},
		{"folded", "none", bm.StepFolded, ""},
		{"folded", "gate,residual", bm.StepFolded, "gate,residual"},
		{"transposed", "auto", bm.StepTransposed, ""},
		{"inout", "auto", bm.StepInOut, ""},
	} {
		st, err := Generate(backend, m, []int{5, 9}, GenerateOptions{MaxTokens: 3, StepWeights: tc.weights, StepFuse: tc.fuse}, nil)
		if err != nil {
			t.Fatalf("%s/%s: %v", tc.weights, tc.fuse, err)
		}
		if st.StepLayout != tc.layout || st.StepFuse != tc.want {
			t.Errorf("%s/%s: steps ran with %s, fuse %q; want %s, %q", tc.weights, tc.fuse, st.StepLayout, st.StepFuse, tc.layout, tc.want)
		}
	}
}

func TestTextStreamer(t *testing.T) {
	// Each id is one byte: "é" is 0xC3 0xA9 and "€" is 0xE2 0x82 0xAC, split across ids.
	text := []byte("a é€!")
	decode := func(ids []int) []byte {
		b := make([]byte, len(ids))
		for i, id := range ids {
			b[i] = byte(id)
		}
		return b
	}
	var w bytes.Buffer
	s := &TextStreamer{W: &w, Decode: decode}
	var writes []string
	for _, c := range text {
		n := w.Len()
		if err := s.Add(int(c)); err != nil {
			t.Fatal(err)
		}
		writes = append(writes, w.String()[n:])
	}
	want := []string{"a", " ", "", "é", "", "", "€", "!"}
	if strings.Join(writes, "|") != strings.Join(want, "|") {
		t.Errorf("writes %q, want %q", writes, want)
	}
	// A dangling lead byte comes out as U+FFFD on Flush.
	s.Add(0xE2)
	s.Flush()
	if got := w.String(); got != "a é€!\uFFFD" {
		t.Errorf("after flush: %q", got)
	}
}

// TestGenerateDType checks GenerateOptions.DType: "auto" keeps the config's dtype on the CPU;
// "bfloat16" converts the stored matmul weights (and rebuilds the step copies from them) and
// gives the tokens of a decoder built the way the latency benchmark builds one (bm.CastWeights,
// then the folded copies); a later float32 generation on the converted model is an error that
// says so, and an unknown dtype an error naming it.
func TestGenerateDType(t *testing.T) {
	backend := cpuBackend(t)
	m := loadFixture(t)
	prompt := []int{5, 9, 300, 2}
	o := GenerateOptions{MaxTokens: 6, StepWeights: "folded"}
	st, err := Generate(backend, m, prompt, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.DType != "float32" {
		t.Errorf("auto on the CPU: dtype %q, want the config's float32", st.DType)
	}
	o.DType = "bfloat16"
	st, err = Generate(backend, m, prompt, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.DType != "bfloat16" || m.Cfg.ComputeDType != "bfloat16" {
		t.Errorf("bfloat16: ran with %q, model config now %q", st.DType, m.Cfg.ComputeDType)
	}
	for v := range m.Ctx.IterVariables() {
		if bm.IsCastWeight(v.Scope(), v.Name()) && v.Shape().DType != dtypes.BFloat16 {
			t.Errorf("bfloat16: weight %s stored as %s", v.ScopeAndName(), v.Shape().DType)
		}
		if strings.HasSuffix(v.Name(), "_stepTN") && v.Shape().DType == dtypes.Float32 && !strings.HasPrefix(v.Name(), "router") { // the router keeps a float32 copy
			t.Errorf("bfloat16: step copy %s left in float32", v.ScopeAndName())
		}
	}
	// The same model converted and folded as the benchmarks do, decoded greedily.
	ref := loadFixture(t)
	ref.Cfg.ComputeDType, ref.Cfg.StepFuse = "bfloat16", "residual"
	if _, err := bm.CastWeights(backend, ref.Ctx, dtypes.BFloat16); err != nil {
		t.Fatal(err)
	}
	if _, err := bm.SetStepLayout(backend, ref.Ctx, bm.StepFolded); err != nil {
		t.Fatal(err)
	}
	dec, err := bm.NewDecoder(backend, ref.Ctx, ref.Cfg, 1, len(prompt)+o.MaxTokens)
	if err != nil {
		t.Fatal(err)
	}
	g := bm.NewGreedyDecoder(dec)
	want, err := g.GenerateStream(prompt, o.MaxTokens, nil)
	g.Release()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.Tokens, want) {
		t.Errorf("bfloat16: tokens %v, the benchmarks' bfloat16 decoder %v", st.Tokens, want)
	}
	o.DType = "float32"
	if _, err := Generate(backend, m, prompt, o, nil); err == nil || !strings.Contains(err.Error(), "converted to") {
		t.Errorf("float32 after bfloat16: error %v, want one saying the weights were converted", err)
	}
	o.DType = "fp8"
	if _, err := Generate(backend, m, prompt, o, nil); err == nil || !strings.Contains(err.Error(), `"fp8"`) {
		t.Errorf("dtype fp8: error %v, want one naming it", err)
	}
}
