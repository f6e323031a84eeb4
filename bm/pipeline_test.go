package bm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"blackmamba/xla/pjrtexec"
)

// On the XLA backend (BLACKMAMBA_TEST_BACKEND) the resident tests go through the pipeline the
// commands use.
func init() {
	RegisterPipeline("xla", func(exec backends.Executable, inputs []backends.Buffer, donated int) (Pipeline, error) {
		p, err := pjrtexec.Start(exec, inputs, donated, pjrtexec.DefaultDepth)
		if err != nil {
			return nil, err
		}
		return p, nil
	})
}

// hostPipeline is a Pipeline for the pure-Go backend, for the tests: it runs each call at once
// through the backend's executable, keeping its own buffers, and at Close writes the last
// outputs into the buffers it was given (the pure-Go backend's buffers are host slices). With
// failAt > 0 that call fails.
type hostPipeline struct {
	backend backends.Backend
	exec    backends.Executable
	orig    []backends.Buffer
	cur     []backends.Buffer
	donated int
	calls   int
	failAt  int
	err     error
}

func (p *hostPipeline) Call() error {
	if p.err != nil {
		return p.err
	}
	if p.calls+1 == p.failAt {
		p.err = fmt.Errorf("call %d failed on purpose", p.failAt)
		return p.err
	}
	donate := make([]bool, len(p.cur))
	for i := range p.donated {
		donate[i] = p.calls > 0 // never the buffers Close writes into
	}
	outs, err := p.exec.Execute(p.cur, donate, 0)
	if err != nil {
		p.err = err
		return err
	}
	if len(outs) != p.donated {
		p.err = fmt.Errorf("%d outputs for %d donated inputs", len(outs), p.donated)
		return p.err
	}
	copy(p.cur, outs)
	p.calls++
	return nil
}

func (p *hostPipeline) Read(i int, dst []byte) error {
	if p.err != nil {
		return p.err
	}
	shape, err := p.backend.BufferShape(p.cur[i])
	if err != nil {
		return err
	}
	if shape.DType != dtypes.Int32 || len(dst) != 4*shape.Size() {
		return fmt.Errorf("hostPipeline reads int32 only into a slice of its size: %s into %d bytes", shape, len(dst))
	}
	return p.backend.BufferToFlatData(p.cur[i], unsafe.Slice((*int32)(unsafe.Pointer(&dst[0])), shape.Size()))
}

func (p *hostPipeline) Close() error {
	if p.err != nil {
		return p.err
	}
	for i := range p.donated {
		if p.calls == 0 {
			break
		}
		flat, err := p.backend.BufferData(p.orig[i])
		if err != nil {
			return err
		}
		if err := p.backend.BufferToFlatData(p.cur[i], flat); err != nil {
			return err
		}
	}
	return nil
}

// withHostPipeline registers hostPipeline for backend (the pure-Go one) for the test's
// duration, counting the pipelines started; failAt as in hostPipeline. On another backend it
// registers nothing: the backend's own pipeline (if any) runs.
func withHostPipeline(t *testing.T, backend backends.Backend, failAt int) *int {
	t.Helper()
	started := new(int)
	if backend.Name() == "xla" {
		return started
	}
	RegisterPipeline(backend.Name(), func(exec backends.Executable, inputs []backends.Buffer, donated int) (Pipeline, error) {
		*started++
		return &hostPipeline{backend: backend, exec: exec, orig: slices.Clone(inputs[:donated]), cur: slices.Clone(inputs), donated: donated, failAt: failAt}, nil
	})
	t.Cleanup(func() { RegisterPipeline(backend.Name(), nil) })
	return started
}

// TestResidentPipeline checks the resident loop with its calls launched through a Pipeline (on
// the CPU the host pipeline above, on the XLA backend pjrtexec, which launches them ahead of the
// device): for the four small architectures, one and four steps per call, prompts of 1 and 5
// tokens, GenerateResident gives the tokens of the calls made one by one (SyncCalls), and
// through the pipeline for all calls but the first of each run of equal calls; streaming gives
// the same tokens with a copy after every call and stops inside a pipelined run; the decoder
// continues from the states a pipeline gave back.
func TestResidentPipeline(t *testing.T) {
	backend := cpuBackend(t)
	withHostPipeline(t, backend, 0)
	if pipelineFor(backend) == nil {
		t.Fatalf("no pipeline registered for backend %q", backend.Name())
	}
	const maxLen = 24
	eachResidentCase(t, backend, maxLen, 5, func(t *testing.T, g *GreedyDecoder, unroll int) {
		for _, prompt := range [][]int{{7}, {3, 1, 4, 1, 5}} {
			n := maxLen - len(prompt) + 1
			run := func(sync bool) ([]int, int) {
				g.SyncCalls = sync
				before := g.PipelinedCalls()
				tok, first := prefillOne(t, g, prompt)
				// Two halves, so that the second continues from the states the first
				// pipeline gave back.
				half := (n - 1) / 2
				a, err := g.GenerateResident(tok, half)
				if err != nil {
					t.Fatal(err)
				}
				// The next input is the last token generated.
				last := tensors.FromFlatDataAndDimensions([]int32{a[0][len(a[0])-1]}, 1)
				b, err := g.GenerateResident(last, n-1-half)
				tok.FinalizeAll()
				last.FinalizeAll()
				if err != nil {
					t.Fatal(err)
				}
				got := []int{first}
				for _, v := range append(a[0], b[0]...) {
					got = append(got, int(v))
				}
				return got, g.PipelinedCalls() - before
			}
			want, syncPiped := run(true)
			got, piped := run(false)
			if !slices.Equal(got, want) {
				t.Errorf("prompt %v: pipelined tokens %v, one by one %v", prompt, got, want)
			}
			if syncPiped != 0 {
				t.Errorf("prompt %v: %d calls pipelined with SyncCalls", prompt, syncPiped)
			}
			// Calls per half: a run of k-step calls, then single steps; all but the
			// first of each run are pipelined (runs are also cut where a KV cache grows).
			most := 0
			for _, steps := range []int{(n - 1) / 2, n - 1 - (n-1)/2} {
				k := max(1, unroll)
				most += max(0, steps/k-1)
				if k > 1 {
					most += max(0, steps%k-1)
				}
			}
			if piped > most || piped == 0 || (!g.hasAttention && piped != most) {
				t.Errorf("prompt %v: %d calls pipelined, want %d (fewer but some with attention)", prompt, piped, most)
			}
		}
		// Streaming with a copy after every call, stopping inside a pipelined run.
		prompt := []int{3, 1, 4}
		maxNew := maxLen - len(prompt) + 1
		g.SyncCalls = true
		want, err := g.GenerateResidentStream(prompt, maxNew, nil)
		if err != nil {
			t.Fatal(err)
		}
		g.SyncCalls = false
		g.StreamInterval = 0
		for _, stop := range []int{maxNew, 1 + 3*max(1, unroll) + 1} {
			var seen []int
			got, err := g.GenerateResidentStream(prompt, maxNew, func(id int) bool { seen = append(seen, id); return len(seen) < stop })
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want[:stop]) || !slices.Equal(seen, want[:stop]) {
				t.Errorf("stream stopping at %d: %v (handed over %v), want %v", stop, got, seen, want[:stop])
			}
		}
	})
}

// TestResidentPipelineError: a call that fails inside the pipeline is an error that says so,
// and the decoder drops the states it lost (the next generation needs a new prefill).
func TestResidentPipelineError(t *testing.T) {
	backend := cpuBackend(t)
	if backend.Name() == "xla" {
		t.Skip("the failing pipeline is the pure-Go backend's test pipeline")
	}
	started := withHostPipeline(t, backend, 2)
	cfg := DecodeCheckConfigs()[0]
	g := newSeededGreedy(t, backend, cfg, 1, 16, 3)
	defer g.Release()
	tok, err := g.PrefillGreedy([][]int{{5}})
	if err != nil {
		t.Fatal(err)
	}
	defer tok.FinalizeAll()
	_, err = g.GenerateResident(tok, 6)
	if err == nil || !strings.Contains(err.Error(), "pipeline") || !strings.Contains(err.Error(), "failed on purpose") {
		t.Fatalf("GenerateResident through a failing pipeline: error %v, want one naming the pipeline and the failure", err)
	}
	if *started != 1 {
		t.Errorf("%d pipelines started, want 1", *started)
	}
	if g.states != nil {
		t.Errorf("the decoder kept %d states lost in the failed call", len(g.states))
	}
	if _, err := g.GenerateResident(tok, 2); err == nil {
		t.Errorf("GenerateResident after a failed pipeline without a new prefill: no error")
	}
}

// TestGenerateResidentMarks checks GenerateResidentMarks for the four small architectures, with
// the calls launched through a pipeline (the host stand-in on the pure-Go backend, the real one
// on XLA) and one by one: it gives GenerateResident's tokens, hands each mark the token of that
// step, and reads them without ending the pipeline (the attention blocks' KV caches end it at
// each bucket, where the Mamba blocks run one pipeline throughout). It refuses unrolled calls
// and marks out of order or out of range.
func TestGenerateResidentMarks(t *testing.T) {
	backend := cpuBackend(t)
	withHostPipeline(t, backend, 0)
	const maxLen, n = 24, 20
	marks := []int{1, 3, 4, 9, n}
	for _, cfg := range DecodeCheckConfigs() {
		for _, sync := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sync=%v", cfg.Name, sync), func(t *testing.T) {
				g := newSeededGreedy(t, backend, cfg, 1, maxLen, 5)
				defer g.Release()
				g.SyncCalls = sync
				tok, _ := prefillOne(t, g, []int{7})
				want, err := g.GenerateResident(tok, n)
				tok.FinalizeAll()
				if err != nil {
					t.Fatal(err)
				}
				tok, _ = prefillOne(t, g, []int{7})
				defer tok.FinalizeAll()
				before := g.PipelinedCalls()
				var seen []int
				got, err := g.GenerateResidentMarks(tok, n, marks, func(m int, toks []int32) {
					seen = append(seen, m)
					if len(toks) != 1 || toks[0] != want[0][m-1] {
						t.Errorf("mark %d: tokens %v, want [%d]", m, toks, want[0][m-1])
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got[0], want[0]) || !slices.Equal(seen, marks) {
					t.Errorf("tokens %v and marks %v, want %v and %v", got[0], seen, want[0], marks)
				}
				piped := g.PipelinedCalls() - before
				if sync && piped != 0 {
					t.Errorf("sync calls: %d pipelined", piped)
				}
				if mambaOnly := !strings.Contains(cfg.Pattern, "a"); !sync && mambaOnly && piped != n-1 {
					t.Errorf("%d calls pipelined, want %d: every call after the first in one pipeline", piped, n-1)
				}
			})
		}
	}
	cfg := DecodeCheckConfigs()[0]
	g := newSeededGreedy(t, backend, cfg, 1, maxLen, 5)
	defer g.Release()
	tok, _ := prefillOne(t, g, []int{7})
	defer tok.FinalizeAll()
	for _, c := range []struct {
		unroll int
		marks  []int
		want   string
	}{{2, []int{2}, "Unroll is 2"}, {1, []int{3, 3}, "must increase"}, {1, []int{0}, "must increase"}, {1, []int{5}, "within 1 … 4"}} {
		g.Unroll = c.unroll
		if _, err := g.GenerateResidentMarks(tok, 4, c.marks, func(int, []int32) {}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("unroll %d, marks %v: error %v, want one saying %q", c.unroll, c.marks, err, c.want)
		}
	}
}
