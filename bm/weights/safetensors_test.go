package weights

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/dtypes/bfloat16"
	. "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"blackmamba/xla"
)

func sampleTensors() map[string]*tensors.Tensor {
	return map[string]*tensors.Tensor{
		"/a/f32":   tensors.FromFlatDataAndDimensions([]float32{1.5, -2, 3.25, 4, 5, 6}, 2, 3),
		"/a/f64":   tensors.FromFlatDataAndDimensions([]float64{1e-300, 2}, 2),
		"/b/bf16":  tensors.FromFlatDataAndDimensions([]bfloat16.BFloat16{bfloat16.FromFloat32(0.5), bfloat16.FromFloat32(-3)}, 1, 2),
		"/b/i32":   tensors.FromFlatDataAndDimensions([]int32{-7, 8, 9}, 3),
		"/b/i64":   tensors.FromFlatDataAndDimensions([]int64{1 << 40}, 1),
		"/c/u16":   tensors.FromFlatDataAndDimensions([]uint16{65535, 1}, 2),
		"/c/empty": tensors.FromShape(shapes.Make(dtypes.Float32, 0, 4)),
		"/scalar":  tensors.FromScalar(float32(7)),
	}
}

func sameTensor(a, b *tensors.Tensor) bool {
	if !a.Shape().Equal(b.Shape()) {
		return false
	}
	var ab, bb []byte
	_ = tensorBytes(a, func(x []byte) { ab = append([]byte(nil), x...) })
	_ = tensorBytes(b, func(x []byte) { bb = append([]byte(nil), x...) })
	return bytes.Equal(ab, bb)
}

func TestSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ts := sampleTensors()
	meta := map[string]string{"config": `{"d_model": 8}`, "step": "12"}
	p1, p2 := filepath.Join(dir, "one.safetensors"), filepath.Join(dir, "two.safetensors")
	for _, p := range []string{p1, p2} {
		if err := Save(p, ts, meta); err != nil {
			t.Fatal(err)
		}
	}
	b1, _ := os.ReadFile(p1)
	b2, _ := os.ReadFile(p2)
	if !bytes.Equal(b1, b2) {
		t.Error("two saves of the same tensors differ")
	}
	if n := binary.LittleEndian.Uint64(b1); n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d files, want 2 (no temporary left)", len(entries))
	}
	got, gotMeta, err := Load(p1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ts) || fmt.Sprint(gotMeta) != fmt.Sprint(meta) {
		t.Fatalf("loaded %d tensors, meta %v", len(got), gotMeta)
	}
	for n, want := range ts {
		if !sameTensor(got[n], want) {
			t.Errorf("%s: got %s %v, want %s %v", n, got[n].Shape(), got[n], want.Shape(), want)
		}
	}
}

// writeRaw writes a safetensors file with the given header JSON and data bytes.
func writeRaw(t *testing.T, path, header string, data []byte) {
	t.Helper()
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(data)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSafetensorsValidation(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, header string
		data         []byte
		raw          []byte // whole file, instead of header+data
		want         string
	}{
		{name: "short", raw: []byte{1, 2, 3}, want: "too short"},
		{name: "huge header", raw: binary.LittleEndian.AppendUint64(nil, 1<<40), want: "exceeds"},
		{name: "header past end", raw: append(binary.LittleEndian.AppendUint64(nil, 100), '{', '}'), want: "runs past the end"},
		{name: "bad json", header: `{"a": `, want: "header entry"},
		{name: "not object", header: `[1, 2]`, want: "not a JSON object"},
		{name: "unknown dtype", header: `{"a": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}`, data: []byte{0}, want: `unknown dtype "F8"`},
		{name: "size mismatch", header: `{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}`, data: make([]byte, 8), want: "needs 8"},
		{name: "truncated", header: `{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}`, data: make([]byte, 10), want: `tensor "a": data [0, 16) ends at file offset`},
		{name: "overlap", header: `{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}`,
			data: make([]byte, 12), want: "overlap"},
		{name: "duplicate", header: `{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}`,
			data: make([]byte, 8), want: "appears twice"},
		{name: "negative dim", header: `{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}`, data: make([]byte, 4), want: "invalid dimension"},
		{name: "bad metadata", header: `{"__metadata__": {"k": 1}}`, want: "must map strings to strings"},
		{name: "trailing", header: `{} {}`, want: "trailing data"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("bad%d.safetensors", i))
			if c.raw != nil {
				_ = os.WriteFile(path, c.raw, 0o644)
			} else {
				writeRaw(t, path, c.header, c.data)
			}
			_, _, err := Load(path)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v, want one naming the file and containing %q", err, c.want)
			}
		})
	}
}

func TestSaveStreamChecksShapes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.safetensors")
	if err := os.WriteFile(path, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	specs := []Spec{{Name: "/x", Shape: shapes.Make(dtypes.Float32, 3), Read: func() (*tensors.Tensor, error) {
		return tensors.FromFlatDataAndDimensions([]float32{1, 2}, 2), nil
	}}}
	err := SaveStream(path, specs, nil)
	if err == nil || !strings.Contains(err.Error(), `tensor "/x" has shape`) {
		t.Fatalf("error %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "previous" {
		t.Error("a failed save changed the existing file")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files left, want 1", len(entries))
	}
}

// buildVars creates variables in ctx: [2,3] f32 "/layer/w", [3] f32 "/layer/b", and a
// non-trainable int64 "/opt/step".
func buildVars(ctx *context.Context, scale float32) {
	l := ctx.In("layer")
	l.VariableWithValue("w", [][]float32{{1 * scale, 2, 3}, {4, 5, 6}})
	l.VariableWithValue("b", []float32{7, 8, scale})
	ctx.In("opt").VariableWithValue("step", int64(42)).SetTrainable(false)
}

func TestContextRoundTrip(t *testing.T) {
	backend, err := backends.NewWithConfig(xla.CPUConfig)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src := context.New()
	buildVars(src, 1)
	path := filepath.Join(dir, "ckpt.safetensors")
	if err = SaveContext(path, src, map[string]string{"note": "x"}); err != nil {
		t.Fatal(err)
	}

	// Into a fresh context: variables are created, the step stays non-trainable, and a graph
	// reading them sees the saved values.
	dst := context.New()
	meta, err := LoadContext(path, dst, IntoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if meta["note"] != "x" {
		t.Errorf("metadata %v", meta)
	}
	if v := dst.GetVariableByScopeAndName("/opt", "step"); v == nil || v.Trainable {
		t.Fatalf("step variable %v", v)
	}
	sum := context.MustExecOnce(backend, dst.Reuse(), func(ctx *context.Context, g *Graph) *Node {
		w := ctx.In("layer").VariableWithShape("w", shapes.Make(dtypes.Float32, 2, 3)).ValueGraph(g)
		b := ctx.In("layer").VariableWithShape("b", shapes.Make(dtypes.Float32, 3)).ValueGraph(g)
		return Add(ReduceAllSum(w), ReduceAllSum(b))
	})
	if got := tensors.ToScalar[float32](sum); got != 21+16 {
		t.Errorf("sum of loaded variables %g, want 37", got)
	}

	// Into a context that already has the variables: values replaced, bf16 converted to f32.
	ts := FromContext(src)
	ts["/layer/b"] = tensors.FromFlatDataAndDimensions([]bfloat16.BFloat16{bfloat16.FromFloat32(1), bfloat16.FromFloat32(2), bfloat16.FromFloat32(3)}, 3)
	into := context.New()
	buildVars(into, 100)
	if err := IntoContext(into, ts); err != nil {
		t.Fatal(err)
	}
	if got := tensors.MustCopyFlatData[float32](into.GetVariableByScopeAndName("/layer", "b").MustValue()); fmt.Sprint(got) != "[1 2 3]" {
		t.Errorf("b = %v", got)
	}
	if got := tensors.MustCopyFlatData[float32](into.GetVariableByScopeAndName("/layer", "w").MustValue()); got[0] != 1 {
		t.Errorf("w = %v", got)
	}
}

func TestIntoContextErrors(t *testing.T) {
	full := func() map[string]*tensors.Tensor {
		ctx := context.New()
		buildVars(ctx, 1)
		return FromContext(ctx)
	}
	cases := []struct {
		name string
		edit func(ts map[string]*tensors.Tensor)
		opts IntoOptions
		want string // "" for success
	}{
		{"complete", func(map[string]*tensors.Tensor) {}, IntoOptions{}, ""},
		{"missing", func(ts map[string]*tensors.Tensor) { delete(ts, "/layer/b") }, IntoOptions{}, `variable "/layer/b" (Float32)[3] has no tensor`},
		{"missing allowed", func(ts map[string]*tensors.Tensor) { delete(ts, "/layer/b") }, IntoOptions{AllowMissing: true}, ""},
		{"extra", func(ts map[string]*tensors.Tensor) { ts["/layer/c"] = tensors.FromScalar(float32(1)) }, IntoOptions{}, `tensor "/layer/c" (Float32) has no variable`},
		{"extra allowed", func(ts map[string]*tensors.Tensor) { ts["/layer/c"] = tensors.FromScalar(float32(1)) }, IntoOptions{AllowExtra: true}, ""},
		{"shape", func(ts map[string]*tensors.Tensor) {
			ts["/layer/w"] = tensors.FromFlatDataAndDimensions([]float32{1, 2, 3, 4, 5, 6}, 3, 2)
		}, IntoOptions{}, `tensor "/layer/w" has shape [3 2], its variable has [2 3]`},
		{"bad name", func(ts map[string]*tensors.Tensor) { ts["nameless"] = tensors.FromScalar(float32(1)) }, IntoOptions{AllowExtra: true}, `"nameless" is not a variable path`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.New()
			buildVars(ctx, 5)
			ts := full()
			c.edit(ts)
			err := IntoContext(ctx, ts, c.opts)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			// Nothing changed.
			if got := tensors.MustCopyFlatData[float32](ctx.GetVariableByScopeAndName("/layer", "b").MustValue()); got[2] != 5 {
				t.Errorf("failed IntoContext changed b to %v", got)
			}
		})
	}
}
