package weights

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"blackmamba/bm"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// encode returns the little-endian bytes of vals in dtype dt (F32 or BF16; BF16 values must be
// exactly representable).
func encode(vals []float32, dt dtypes.DType) []byte {
	var b bytes.Buffer
	for _, v := range vals {
		if dt == dtypes.BFloat16 {
			_ = binary.Write(&b, binary.LittleEndian, uint16(math.Float32bits(v)>>16))
		} else {
			_ = binary.Write(&b, binary.LittleEndian, v)
		}
	}
	return b.Bytes()
}

func storageName(dt dtypes.DType) string {
	if dt == dtypes.BFloat16 {
		return "BFloat16Storage"
	}
	return "FloatStorage"
}

// pattern returns n deterministic values, exact in bfloat16, distinct per seed.
func pattern(n, seed int) []float32 {
	v := make([]float32, n)
	for k := range v {
		v[k] = float32((k*7+seed*13)%251-125) / 64
	}
	return v
}

// fakeModel builds the released state dict of cfg: names, PyTorch shapes and values.
type fakeModel struct {
	tensors []fakeTensor
	values  map[string][]float32
	shapes  map[string][]int
}

func releasedNames(cfg bm.Config) ([]string, map[string][]int) {
	d, D, N, K, R, F, V := cfg.Dim, cfg.Inner(), cfg.StateSize, cfg.ConvKernel, cfg.Rank(), cfg.FFN, cfg.Vocab
	shapes := map[string][]int{
		"embedding.word_embeddings.weight": {V, d},
		"decoder.final_layernorm.weight":   {d},
		"decoder.final_layernorm.bias":     {d},
	}
	for i, b := range cfg.Blocks() {
		p := fmt.Sprintf("decoder.layers.%d.", i)
		shapes[p+"norm.weight"] = []int{d}
		switch b.Kind {
		case bm.KindMamba:
			for n, s := range map[string][]int{
				"in_proj.weight": {2 * D, d}, "conv1d.weight": {D, 1, K}, "conv1d.bias": {D},
				"x_proj.weight": {R + 2*N, D}, "dt_proj.weight": {D, R}, "dt_proj.bias": {D},
				"A_log": {D, N}, "D": {D}, "out_proj.weight": {d, D},
			} {
				shapes[p+"mixer."+n] = s
			}
		case bm.KindMoE:
			shapes[p+"mixer.router.weight"] = []int{b.Experts, d}
			shapes[p+"mixer.router.bias"] = []int{b.Experts}
			for e := range b.Experts {
				shapes[fmt.Sprintf("%smixer.local_experts.%d.linear_fc1.weight", p, e)] = []int{2 * F, d}
				shapes[fmt.Sprintf("%smixer.local_experts.%d.linear_fc2.weight", p, e)] = []int{d, F}
			}
		case bm.KindMLP:
			shapes[p+"mixer.linear_fc1.weight"] = []int{2 * F, d}
			shapes[p+"mixer.linear_fc2.weight"] = []int{d, F}
		}
	}
	var names []string
	for n := range shapes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, shapes
}

func newFakeModel(cfg bm.Config, dt dtypes.DType) *fakeModel {
	names, shapes := releasedNames(cfg)
	m := &fakeModel{values: map[string][]float32{}, shapes: shapes}
	for i, n := range names {
		numel := 1
		for _, x := range shapes[n] {
			numel *= x
		}
		v := pattern(numel, i)
		m.values[n] = v
		m.tensors = append(m.tensors, fakeTensor{name: n, storageType: storageName(dt), key: fmt.Sprint(i),
			shape: shapes[n], numel: numel, data: encode(v, dt)})
	}
	return m
}

// testConfig is a tiny config with Mamba, MoE and dense MLP blocks.
func testConfig() bm.Config {
	c := bm.MustPreset("tiny")
	c.Name = "import-test"
	c.Pattern = "r4r1"
	c.Dim, c.FFN, c.Vocab, c.VocabReal, c.StateSize = 8, 12, 16, 16, 4
	return c
}

func float32s(t *testing.T, x *tensors.Tensor) []float32 {
	t.Helper()
	if x.DType() == dtypes.Float32 {
		return tensors.MustCopyFlatData[float32](x)
	}
	c, err := convertTensor(x, dtypes.Float32)
	if err != nil {
		t.Fatal(err)
	}
	return tensors.MustCopyFlatData[float32](c)
}

func TestReadTorchLayouts(t *testing.T) {
	dir := t.TempDir()
	base := pattern(24, 3)
	// One storage of 24 floats viewed three ways, plus a bf16 tensor in a deflated entry.
	ts := []fakeTensor{
		{name: "a.full", storageType: "FloatStorage", key: "0", shape: []int{4, 6}, numel: 24, data: encode(base, dtypes.Float32)},
		{name: "a.rows", storageType: "FloatStorage", key: "0", shape: []int{2, 6}, offset: 6, numel: 24, data: encode(base, dtypes.Float32)},
		{name: "a.transposed", storageType: "FloatStorage", key: "0", shape: []int{6, 4}, strides: []int{1, 6}, numel: 24, data: encode(base, dtypes.Float32)},
		{name: "b", storageType: "BFloat16Storage", key: "1", shape: []int{3}, numel: 3, data: encode(base[:3], dtypes.BFloat16)},
		{name: "scalar", storageType: "FloatStorage", key: "2", shape: []int{}, numel: 1, data: encode(base[5:6], dtypes.Float32)},
	}
	for _, deflate := range []bool{false, true} {
		path := filepath.Join(dir, fmt.Sprintf("layouts-%v.pt", deflate))
		writeTorchArchive(t, path, ts, archiveOpts{deflate: deflate, byteorder: "little"})
		a, err := ReadTorch(path)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][]float32{
			"model.a.full": base,
			"model.a.rows": base[6:18],
			"model.b":      base[:3],
			"model.scalar": base[5:6],
		}
		var tr []float32
		for c := 0; c < 6; c++ {
			for r := 0; r < 4; r++ {
				tr = append(tr, base[r*6+c])
			}
		}
		want["model.a.transposed"] = tr
		if got := a.Names(); strings.Join(got, ",") != "model.a.full,model.a.rows,model.a.transposed,model.b,model.scalar" {
			t.Fatalf("names %v", got)
		}
		for name, w := range want {
			x, err := a.Tensor(name).Tensor()
			if err != nil {
				t.Fatal(err)
			}
			if got := float32s(t, x); fmt.Sprint(got) != fmt.Sprint(w) {
				t.Errorf("deflate=%v %s = %v, want %v", deflate, name, got, w)
			}
		}
		if a.Tensor("model.b").DType != dtypes.BFloat16 {
			t.Errorf("model.b dtype %s", a.Tensor("model.b").DType)
		}
		_ = a.Close()
	}
}

func TestReadTorchErrors(t *testing.T) {
	dir := t.TempDir()
	good := []fakeTensor{{name: "w", storageType: "FloatStorage", key: "0", shape: []int{2, 3}, numel: 6, data: encode(pattern(6, 1), dtypes.Float32)}}
	replace := func(old, new string) func([]byte) []byte {
		return func(b []byte) []byte { return bytes.Replace(b, []byte(old), []byte(new), 1) }
	}
	cases := []struct {
		name    string
		ts      []fakeTensor
		opts    archiveOpts
		corrupt func(path string)
		want    string
	}{
		{name: "unknown opcode", ts: good, opts: archiveOpts{editPickle: func(b []byte) []byte {
			return append([]byte{0x80, 2, 0xff}, b[2:]...)
		}}, want: "opcode 0xff (unknown) at offset 2"},
		{name: "disallowed global", ts: good, opts: archiveOpts{editPickle: replace("collections\nOrderedDict", "posix\nsystem")},
			want: "not allowed"},
		{name: "missing storage", ts: good, opts: archiveOpts{skipStorage: map[string]bool{"0": true}}, want: "no entry archive/data/0"},
		{name: "storage too small", ts: []fakeTensor{{name: "w", storageType: "FloatStorage", key: "0", shape: []int{2, 3}, numel: 6, data: make([]byte, 20)}},
			want: "has 20 bytes, but 6 elements"},
		{name: "tensor past storage", ts: []fakeTensor{{name: "w", storageType: "FloatStorage", key: "0", shape: []int{2, 3}, offset: 1, numel: 6, data: make([]byte, 24)}},
			want: "reaches element 6 of storage 0"},
		{name: "big endian", ts: good, opts: archiveOpts{byteorder: "big"}, want: "only little-endian"},
		{name: "truncated", ts: good, corrupt: func(path string) {
			b, _ := os.ReadFile(path)
			_ = os.WriteFile(path, b[:len(b)/2], 0o644)
		}, want: "truncated"},
		{name: "not a zip", ts: good, corrupt: func(path string) { _ = os.WriteFile(path, []byte("\x80\x02}q\x00."), 0o644) }, want: "not a torch.save zip archive"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("bad%d.pt", i))
			writeTorchArchive(t, path, c.ts, c.opts)
			if c.corrupt != nil {
				c.corrupt(path)
			}
			a, err := ReadTorch(path)
			if err == nil {
				_ = a.Close()
				t.Fatalf("no error, want one containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q, want it to contain %q and the path", err, c.want)
			}
		})
	}
}

// TestImportBlackMamba checks the mapping of every released tensor onto bm's variables on a
// synthetic archive: transposes, the conv kernel, expert stacking and dtype handling.
func TestImportBlackMamba(t *testing.T) {
	cfg := testConfig()
	dir := t.TempDir()
	m := newFakeModel(cfg, dtypes.BFloat16)
	path := filepath.Join(dir, "pytorch_model.bin")
	writeTorchArchive(t, path, m.tensors, archiveOpts{})
	a, err := ReadTorch(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, dt := range []dtypes.DType{dtypes.InvalidDType, dtypes.Float32} {
		ts, err := ImportBlackMamba(a, cfg, ImportOptions{DType: dt})
		if err != nil {
			t.Fatal(err)
		}
		d, D, K, F := cfg.Dim, cfg.Inner(), cfg.ConvKernel, cfg.FFN
		type check struct {
			out  string
			dims []int
			at   func(idx []int) float32 // expected value at an output index
		}
		src := func(name string) []float32 { return m.values[name] }
		mat := func(name string, cols int) func(r, c int) float32 {
			v := src(name)
			return func(r, c int) float32 { return v[r*cols+c] }
		}
		checks := []check{
			{"/embedding/word_embeddings/weight", []int{cfg.Vocab, d}, func(i []int) float32 { return mat("embedding.word_embeddings.weight", d)(i[0], i[1]) }},
			{"/decoder/final_layernorm/bias", []int{d}, func(i []int) float32 { return src("decoder.final_layernorm.bias")[i[0]] }},
			{"/decoder/layers/0/mixer/in_proj", []int{d, 2 * D}, func(i []int) float32 { return mat("decoder.layers.0.mixer.in_proj.weight", d)(i[1], i[0]) }},
			{"/decoder/layers/0/mixer/conv1d_weight", []int{K, D}, func(i []int) float32 { return mat("decoder.layers.0.mixer.conv1d.weight", K)(i[1], i[0]) }},
			{"/decoder/layers/0/mixer/out_proj", []int{D, d}, func(i []int) float32 { return mat("decoder.layers.0.mixer.out_proj.weight", D)(i[1], i[0]) }},
			{"/decoder/layers/0/mixer/A_log", []int{D, cfg.StateSize}, func(i []int) float32 { return mat("decoder.layers.0.mixer.A_log", cfg.StateSize)(i[0], i[1]) }},
			{"/decoder/layers/1/mixer/router_weight", []int{d, 4}, func(i []int) float32 { return mat("decoder.layers.1.mixer.router.weight", d)(i[1], i[0]) }},
			{"/decoder/layers/1/mixer/fc1", []int{4, d, 2 * F}, func(i []int) float32 {
				return mat(fmt.Sprintf("decoder.layers.1.mixer.local_experts.%d.linear_fc1.weight", i[0]), d)(i[2], i[1])
			}},
			{"/decoder/layers/1/mixer/fc2", []int{4, F, d}, func(i []int) float32 {
				return mat(fmt.Sprintf("decoder.layers.1.mixer.local_experts.%d.linear_fc2.weight", i[0]), F)(i[2], i[1])
			}},
			{"/decoder/layers/3/mixer/fc1", []int{d, 2 * F}, func(i []int) float32 { return mat("decoder.layers.3.mixer.linear_fc1.weight", d)(i[1], i[0]) }},
		}
		for _, c := range checks {
			x := ts[c.out]
			if x == nil {
				t.Fatalf("no output %s", c.out)
			}
			wantDT := dt
			if dt == dtypes.InvalidDType {
				wantDT = dtypes.BFloat16
			}
			if x.DType() != wantDT || fmt.Sprint(x.Shape().Dimensions) != fmt.Sprint(c.dims) {
				t.Fatalf("%s is %s, want %s%v", c.out, x.Shape(), wantDT, c.dims)
			}
			got := float32s(t, x)
			idx := make([]int, len(c.dims))
			for k := range got {
				if w := c.at(idx); got[k] != w {
					t.Fatalf("%s%v = %g, want %g", c.out, idx, got[k], w)
				}
				for a := len(idx) - 1; a >= 0; a-- {
					if idx[a]++; idx[a] < c.dims[a] {
						break
					}
					idx[a] = 0
				}
			}
		}
		// Every released tensor has one output; MoE experts collapse into two.
		wantOutputs := len(m.tensors) - 2*4 + 2
		if len(ts) != wantOutputs {
			t.Errorf("%d outputs, want %d", len(ts), wantOutputs)
		}
	}
}

func TestImportBlackMambaErrors(t *testing.T) {
	cfg := testConfig()
	dir := t.TempDir()
	cases := []struct {
		name string
		edit func(ts []fakeTensor) []fakeTensor
		cfg  func(c bm.Config) bm.Config
		want []string
	}{
		{name: "missing", edit: func(ts []fakeTensor) []fakeTensor {
			var out []fakeTensor
			for _, x := range ts {
				if x.name != "decoder.layers.0.mixer.D" {
					out = append(out, x)
				}
			}
			return out
		}, want: []string{`missing tensor "decoder.layers.0.mixer.D"`}},
		{name: "extra", edit: func(ts []fakeTensor) []fakeTensor {
			return append(ts, fakeTensor{name: "decoder.layers.9.norm.weight", storageType: "FloatStorage", key: "extra", shape: []int{8}, numel: 8, data: make([]byte, 32)})
		}, want: []string{`unexpected tensor "model.decoder.layers.9.norm.weight"`}},
		{name: "config disagrees", cfg: func(c bm.Config) bm.Config { c.StateSize = 8; return c },
			want: []string{`tensor "decoder.layers.0.mixer.A_log" has shape [16 4] in the archive, but the config expects [16 8]`}},
		{name: "fewer blocks", cfg: func(c bm.Config) bm.Config { c.Pattern = "r4"; return c },
			want: []string{`unexpected tensor "model.decoder.layers.2.mixer.A_log"`}},
		{name: "untied head", edit: func(ts []fakeTensor) []fakeTensor {
			return append(ts, fakeTensor{name: "output_layer.weight", storageType: "FloatStorage", key: "head", shape: []int{16, 8}, numel: 128, data: make([]byte, 512)})
		}, want: []string{`"output_layer.weight"`, "untied"}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newFakeModel(cfg, dtypes.Float32)
			ts := m.tensors
			if c.edit != nil {
				ts = c.edit(ts)
			}
			cc := cfg
			if c.cfg != nil {
				cc = c.cfg(cfg)
			}
			path := filepath.Join(dir, fmt.Sprintf("m%d.bin", i))
			writeTorchArchive(t, path, ts, archiveOpts{})
			a, err := ReadTorch(path)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			_, err = ImportBlackMamba(a, cc)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nwant it to contain %q", err, w)
				}
			}
		})
	}
	// A tied head sharing the embedding's storage is accepted.
	m := newFakeModel(cfg, dtypes.Float32)
	for _, x := range m.tensors {
		if x.name == "embedding.word_embeddings.weight" {
			x.name = "output_layer.weight"
			m.tensors = append(m.tensors, x)
			break
		}
	}
	path := filepath.Join(dir, "tied.bin")
	writeTorchArchive(t, path, m.tensors, archiveOpts{})
	a, err := ReadTorch(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := ImportBlackMamba(a, cfg); err != nil {
		t.Fatalf("tied head: %v", err)
	}
}

func TestConfigFromReleased(t *testing.T) {
	layers := func(n int) string {
		var s []string
		for i := 0; i < n; i++ {
			s = append(s, `"r"`, `"8"`)
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	released := func(blocks, d, f int, extra string) string {
		return fmt.Sprintf(`{"num_layers": %d, "hidden_size": %d, "state_size": 16, "conv_dimension": 4,
			"vocab_size": 50304, "expansion_factor": 2, "mamba_moe_layers": %s, "ffn_hidden_size": %d,
			"bias": false, "add_bias_linear": false, "swiglu": true, "max_sequence_length": 2048%s}`,
			blocks, d, layers(blocks/2), f, extra)
	}
	cases := []struct {
		name      string
		json      string
		wantTotal int64 // 0: expect an error
		wantErr   string
	}{
		{"1.5b", released(30, 1152, 3072, ""), 1_458_462_072, ""},
		{"2.8b", released(36, 1472, 3872, `, "layernorm_epsilon": 1e-5, "dt_rank": "auto"`), 2_783_213_584, ""},
		{"missing field", `{"num_layers": 2}`, 0, `missing field "hidden_size"`},
		{"layer count", strings.Replace(released(30, 1152, 3072, ""), `"num_layers": 30`, `"num_layers": 28`, 1), 0, "num_layers is 28 but mamba_moe_layers lists 30"},
		{"bias", strings.Replace(released(4, 64, 128, ""), `"add_bias_linear": false`, `"add_bias_linear": true`, 1), 0, "add_bias_linear"},
		{"parallel moe", strings.Replace(released(2, 64, 128, ""), `"8"`, `"r8"`, 1), 0, `mamba_moe_layers[1] = "r8"`},
		{"not json", `{"num_layers": `, 0, "released config.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ConfigFromReleased([]byte(c.json))
			if c.wantTotal == 0 {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if total, _ := cfg.ParamCounts(); total != c.wantTotal {
				t.Errorf("total params %d, want %d", total, c.wantTotal)
			}
			if cfg.Name != c.name || cfg.VocabReal != bm.NeoXVocabReal || cfg.Activation != "silu" {
				t.Errorf("config %+v", cfg)
			}
		})
	}
}
