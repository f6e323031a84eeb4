package weights

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"blackmamba/bm"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// releasedConfig holds the fields of a released BlackMamba config.json that define the network.
// Other fields (training settings of the original code) are ignored.
type releasedConfig struct {
	NumLayers         *int            `json:"num_layers"`
	HiddenSize        *int            `json:"hidden_size"`
	StateSize         *int            `json:"state_size"`
	ConvDimension     *int            `json:"conv_dimension"`
	VocabSize         *int            `json:"vocab_size"`
	ExpansionFactor   *int            `json:"expansion_factor"`
	MambaMoELayers    json.RawMessage `json:"mamba_moe_layers"`
	FFNHiddenSize     *int            `json:"ffn_hidden_size"`
	Bias              *bool           `json:"bias"`
	AddBiasLinear     *bool           `json:"add_bias_linear"`
	Swiglu            *bool           `json:"swiglu"`
	GatedLinearUnit   *bool           `json:"gated_linear_unit"`
	MaxSequenceLength *int            `json:"max_sequence_length"`
	DtRank            json.RawMessage `json:"dt_rank"`
	LayernormEpsilon  *float64        `json:"layernorm_epsilon"`
	ConvBias          *bool           `json:"conv_bias"`
	RMSNorm           *bool           `json:"rms_norm"`
	NumMoEExperts     *int            `json:"num_moe_experts"`
}

// ConfigFromReleased reads a released BlackMamba config.json (num_layers, hidden_size,
// state_size, conv_dimension, vocab_size, expansion_factor, mamba_moe_layers, ffn_hidden_size,
// add_bias_linear, swiglu, max_sequence_length, and optionally dt_rank, layernorm_epsilon,
// conv_bias, rms_norm) into a bm.Config. Fields the network does not depend on take the defaults
// of the matching preset ("1.5b", "2.8b") or of "small". Experts use SiLU (swiglu); set
// Activation to "gelu" to reproduce the released inference code. A vocabulary of 50,304 rows is
// the padded GPT-NeoX one (50,277 real ids); any other size is taken as all real.
func ConfigFromReleased(configJSON []byte) (bm.Config, error) {
	bad := func(format string, args ...any) (bm.Config, error) {
		return bm.Config{}, fmt.Errorf("weights: released config.json: %s", fmt.Sprintf(format, args...))
	}
	var rc releasedConfig
	if err := json.Unmarshal(configJSON, &rc); err != nil {
		return bad("%v", err)
	}
	required := []struct {
		name string
		v    *int
	}{{"num_layers", rc.NumLayers}, {"hidden_size", rc.HiddenSize}, {"state_size", rc.StateSize},
		{"conv_dimension", rc.ConvDimension}, {"vocab_size", rc.VocabSize}, {"expansion_factor", rc.ExpansionFactor},
		{"ffn_hidden_size", rc.FFNHiddenSize}}
	for _, r := range required {
		if r.v == nil {
			return bad("missing field %q", r.name)
		}
		if *r.v <= 0 {
			return bad("field %q must be positive, got %d", r.name, *r.v)
		}
	}
	if len(rc.MambaMoELayers) == 0 || string(rc.MambaMoELayers) == "null" {
		return bad("missing field \"mamba_moe_layers\"")
	}
	entries, err := parseLayerList(rc.MambaMoELayers)
	if err != nil {
		return bad("field \"mamba_moe_layers\": %v", err)
	}
	if len(entries) != *rc.NumLayers {
		return bad("num_layers is %d but mamba_moe_layers lists %d blocks", *rc.NumLayers, len(entries))
	}
	for i, e := range entries {
		if e == "r" {
			continue
		}
		n, err := strconv.Atoi(e)
		if err != nil || n < 1 {
			return bad("mamba_moe_layers[%d] = %q: want \"r\" (Mamba), \"1\" (dense MLP) or an expert count (MoE); "+
				"blocks with a parallel MoE such as \"r8\" are not supported", i, e)
		}
		if rc.NumMoEExperts != nil && n > 1 && n != *rc.NumMoEExperts {
			return bad("mamba_moe_layers[%d] = %q disagrees with num_moe_experts = %d", i, e, *rc.NumMoEExperts)
		}
	}
	if b := rc.AddBiasLinear; b != nil && *b {
		return bad("add_bias_linear is true: linear layers with biases are not supported")
	}
	if b := rc.Bias; b != nil && *b {
		return bad("bias is true: Mamba projections with biases are not supported")
	}
	if b := rc.ConvBias; b != nil && !*b {
		return bad("conv_bias is false: a Mamba conv without bias is not supported")
	}
	if b := rc.RMSNorm; b != nil && !*b {
		return bad("rms_norm is false: only RMSNorm blocks are supported")
	}
	gated := rc.Swiglu
	if gated == nil {
		gated = rc.GatedLinearUnit
	}
	if gated != nil && !*gated {
		return bad("swiglu is false: only gated (GLU) experts are supported")
	}

	pattern := strings.Join(entries, ",")
	if len(entries) > 0 {
		single := true
		for _, e := range entries {
			single = single && len(e) == 1
		}
		if single {
			pattern = strings.Join(entries, "")
		}
	}
	c := bm.MustPreset("small")
	for _, name := range []string{"1.5b", "2.8b"} {
		p := bm.MustPreset(name)
		if p.Pattern == pattern && p.Dim == *rc.HiddenSize && p.FFN == *rc.FFNHiddenSize {
			c = p
		}
	}
	if c.Pattern != pattern || c.Dim != *rc.HiddenSize {
		c.Name = fmt.Sprintf("released-d%d-%dblocks", *rc.HiddenSize, len(entries))
	}
	c.Pattern = pattern
	c.Dim = *rc.HiddenSize
	c.StateSize = *rc.StateSize
	c.ConvKernel = *rc.ConvDimension
	c.Expand = *rc.ExpansionFactor
	c.FFN = *rc.FFNHiddenSize
	c.Vocab = *rc.VocabSize
	c.VocabReal = c.Vocab
	if c.Vocab == bm.NeoXVocabPadded {
		c.VocabReal = bm.NeoXVocabReal
	}
	c.Activation = "silu"
	c.DtRank = 0
	if len(rc.DtRank) > 0 && string(rc.DtRank) != "null" && string(rc.DtRank) != `"auto"` {
		var r int
		if err := json.Unmarshal(rc.DtRank, &r); err != nil || r <= 0 {
			return bad("dt_rank %s: want \"auto\" or a positive integer", rc.DtRank)
		}
		c.DtRank = r
	}
	if rc.LayernormEpsilon != nil {
		c.NormEps = *rc.LayernormEpsilon
	}
	if rc.MaxSequenceLength != nil {
		c.MaxSeqLen = *rc.MaxSequenceLength
	}
	c.Heads = max(1, c.Dim/64) // used only by attention blocks, which released models lack
	if err := c.Validate(); err != nil {
		return bad("%v", err)
	}
	return c, nil
}

// parseLayerList reads mamba_moe_layers: a JSON list of strings or numbers, or one string
// ("r8r8", "r 8 r 8" or "r,8,r,8").
func parseLayerList(raw json.RawMessage) ([]string, error) {
	var list []any
	if err := json.Unmarshal(raw, &list); err == nil {
		out := make([]string, len(list))
		for i, v := range list {
			switch v := v.(type) {
			case string:
				out[i] = strings.TrimSpace(v)
			case float64:
				out[i] = strconv.FormatFloat(v, 'f', -1, 64)
			default:
				return nil, fmt.Errorf("entry %d is %v, want a string", i, v)
			}
		}
		return out, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("want a list of strings or a string, got %s", raw)
	}
	if strings.ContainsAny(s, ", ") {
		return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }), nil
	}
	out := make([]string, 0, len(s))
	for _, r := range s {
		out = append(out, string(r))
	}
	return out, nil
}

// ImportOptions configures ImportBlackMamba.
type ImportOptions struct {
	// DType of the imported float tensors. The zero value keeps the archive's dtype (bfloat16
	// for the released files); dtypes.Float32 converts.
	DType dtypes.DType
}

// Import is a checked conversion of a torch archive into bm's variables, producing one tensor
// at a time (see Specs for writing it without holding the whole model in memory).
type Import struct {
	names []string
	outs  map[string]*importOut
}

type importOut struct {
	shape shapes.Shape
	build func() (*tensors.Tensor, error)
}

// Names returns the output tensor names (bm variable paths), sorted.
func (im *Import) Names() []string { return append([]string(nil), im.names...) }

// Shape returns the shape of an output tensor.
func (im *Import) Shape(name string) (shapes.Shape, bool) {
	o, ok := im.outs[name]
	if !ok {
		return shapes.Shape{}, false
	}
	return o.shape, true
}

// Tensor reads and converts one output tensor.
func (im *Import) Tensor(name string) (*tensors.Tensor, error) {
	o, ok := im.outs[name]
	if !ok {
		return nil, fmt.Errorf("weights: import has no tensor %q", name)
	}
	return o.build()
}

// Specs returns the outputs as SaveStream specs (each tensor is freed once written).
func (im *Import) Specs() []Spec {
	specs := make([]Spec, 0, len(im.names))
	for _, n := range im.names {
		o := im.outs[n]
		specs = append(specs, Spec{Name: n, Shape: o.shape, Read: o.build, Free: true})
	}
	return specs
}

// All converts every tensor.
func (im *Import) All() (map[string]*tensors.Tensor, error) {
	ts := make(map[string]*tensors.Tensor, len(im.names))
	for _, n := range im.names {
		t, err := im.outs[n].build()
		if err != nil {
			for _, t := range ts {
				t.FinalizeAll()
			}
			return nil, err
		}
		ts[n] = t
	}
	return ts, nil
}

// ImportBlackMamba converts the state dict of a released BlackMamba archive (the tensors of
// SPEC §6, under "model" as released or at the top level) into bm's variables, keyed by
// variable path (see the package documentation for the mapping). Every name and shape is checked
// against cfg: a missing or extra tensor, or a shape that disagrees with cfg, is an error naming
// the tensor (and both shapes).
func ImportBlackMamba(archive *TorchArchive, cfg bm.Config, opts ...ImportOptions) (map[string]*tensors.Tensor, error) {
	var o ImportOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	im, err := PlanBlackMamba(archive, cfg, o)
	if err != nil {
		return nil, err
	}
	return im.All()
}

// source is one expected tensor of the archive.
type source struct {
	name string
	dims []int
}

// PlanBlackMamba checks the archive against cfg and returns the conversion, without reading
// any tensor data yet (except an untied-looking output_layer.weight, compared to the embedding).
func PlanBlackMamba(a *TorchArchive, cfg bm.Config, opts ImportOptions) (*Import, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("weights: importing %s: %w", a.Path, err)
	}
	prefix := ""
	for _, n := range a.Names() {
		if strings.HasPrefix(n, "model.") {
			prefix = "model."
			break
		}
	}
	avail := map[string]*TorchTensor{}
	var errs []error
	for _, n := range a.Names() {
		if !strings.HasPrefix(n, prefix) {
			errs = append(errs, fmt.Errorf("unexpected tensor %q outside the %q state dict", n, strings.TrimSuffix(prefix, ".")))
			continue
		}
		avail[strings.TrimPrefix(n, prefix)] = a.Tensor(n)
	}

	d, D, N, K, R, F, V := cfg.Dim, cfg.Inner(), cfg.StateSize, cfg.ConvKernel, cfg.Rank(), cfg.FFN, cfg.Vocab
	used := map[string]bool{}
	// get checks and claims one expected tensor.
	get := func(s source) *TorchTensor {
		used[s.name] = true
		t := avail[s.name]
		if t == nil {
			errs = append(errs, fmt.Errorf("missing tensor %q (config expects shape %v)", s.name, s.dims))
			return nil
		}
		if !slices.Equal(t.Shape, s.dims) {
			errs = append(errs, fmt.Errorf("tensor %q has shape %v in the archive, but the config expects %v", s.name, t.Shape, s.dims))
			return nil
		}
		if !t.DType.IsFloat() {
			errs = append(errs, fmt.Errorf("tensor %q has dtype %s, want a float type", s.name, t.DType))
			return nil
		}
		return t
	}
	im := &Import{outs: map[string]*importOut{}}
	add := func(name string, dims []int, dt dtypes.DType, build func(dt dtypes.DType) (*tensors.Tensor, error)) {
		if opts.DType != dtypes.InvalidDType {
			dt = opts.DType
		}
		im.names = append(im.names, name)
		im.outs[name] = &importOut{shape: shapes.Make(dt, dims...), build: func() (*tensors.Tensor, error) { return build(dt) }}
	}
	// plain copies a tensor; transposed turns a PyTorch [out, in] matrix (or [D, 1, K] conv
	// kernel) into [in, out].
	plain := func(out string, s source) {
		if t := get(s); t != nil {
			add(out, s.dims, t.DType, func(dt dtypes.DType) (*tensors.Tensor, error) { return convertTorch(t, dt, false, out) })
		}
	}
	transposed := func(out string, s source) {
		if t := get(s); t != nil {
			rows, cols := s.dims[0], s.dims[len(s.dims)-1]
			add(out, []int{cols, rows}, t.DType, func(dt dtypes.DType) (*tensors.Tensor, error) { return convertTorch(t, dt, true, out) })
		}
	}
	// stacked transposes each expert's matrix and stacks them on a new leading axis.
	stacked := func(out string, srcs []source) {
		ts := make([]*TorchTensor, len(srcs))
		ok := true
		for i, s := range srcs {
			if ts[i] = get(s); ts[i] == nil {
				ok = false
			}
		}
		if !ok {
			return
		}
		rows, cols := srcs[0].dims[0], srcs[0].dims[1]
		add(out, []int{len(srcs), cols, rows}, ts[0].DType, func(dt dtypes.DType) (*tensors.Tensor, error) {
			return stackTorch(ts, dt, out)
		})
	}

	embName := "embedding.word_embeddings.weight"
	plain("/embedding/word_embeddings/weight", source{embName, []int{V, d}})
	plain("/decoder/final_layernorm/weight", source{"decoder.final_layernorm.weight", []int{d}})
	plain("/decoder/final_layernorm/bias", source{"decoder.final_layernorm.bias", []int{d}})
	if head := avail["output_layer.weight"]; head != nil {
		used["output_layer.weight"] = true
		if emb := avail[embName]; emb != nil {
			if err := checkTied(head, emb); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for i, b := range cfg.Blocks() {
		src := func(suffix string, dims ...int) source {
			return source{fmt.Sprintf("decoder.layers.%d.%s", i, suffix), dims}
		}
		out := func(name string) string { return fmt.Sprintf("/decoder/layers/%d/%s", i, name) }
		plain(out("norm/weight"), src("norm.weight", d))
		switch b.Kind {
		case bm.KindMamba:
			transposed(out("mixer/in_proj"), src("mixer.in_proj.weight", 2*D, d))
			transposed(out("mixer/conv1d_weight"), src("mixer.conv1d.weight", D, 1, K))
			plain(out("mixer/conv1d_bias"), src("mixer.conv1d.bias", D))
			transposed(out("mixer/x_proj"), src("mixer.x_proj.weight", R+2*N, D))
			transposed(out("mixer/dt_proj"), src("mixer.dt_proj.weight", D, R))
			plain(out("mixer/dt_proj_bias"), src("mixer.dt_proj.bias", D))
			plain(out("mixer/A_log"), src("mixer.A_log", D, N))
			plain(out("mixer/D"), src("mixer.D", D))
			transposed(out("mixer/out_proj"), src("mixer.out_proj.weight", d, D))
		case bm.KindMoE:
			E := b.Experts
			transposed(out("mixer/router_weight"), src("mixer.router.weight", E, d))
			plain(out("mixer/router_bias"), src("mixer.router.bias", E))
			fc1 := make([]source, E)
			fc2 := make([]source, E)
			for e := range E {
				fc1[e] = src(fmt.Sprintf("mixer.local_experts.%d.linear_fc1.weight", e), 2*F, d)
				fc2[e] = src(fmt.Sprintf("mixer.local_experts.%d.linear_fc2.weight", e), d, F)
			}
			stacked(out("mixer/fc1"), fc1)
			stacked(out("mixer/fc2"), fc2)
		case bm.KindMLP:
			transposed(out("mixer/fc1"), src("mixer.linear_fc1.weight", 2*F, d))
			transposed(out("mixer/fc2"), src("mixer.linear_fc2.weight", d, F))
		default:
			errs = append(errs, fmt.Errorf("block %d is of kind %q, which the released format does not have", i, string(b.Kind)))
		}
	}
	var extra []string
	for n := range avail {
		if !used[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		errs = append(errs, fmt.Errorf("unexpected tensor %q %v: config %q has no place for it", prefix+n, avail[n].Shape, cfg.Name))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("weights: importing %s as %q (pattern %s): %w", a.Path, cfg.Name, cfg.Pattern, errors.Join(limitErrors(errs)...))
	}
	sort.Strings(im.names)
	return im, nil
}

// checkTied accepts an output_layer.weight only if it equals the embedding (the head is tied).
func checkTied(head, emb *TorchTensor) error {
	if !slices.Equal(head.Shape, emb.Shape) || head.DType != emb.DType {
		return fmt.Errorf("tensor \"output_layer.weight\" %s%v differs from the embedding %s%v: untied heads are not supported",
			head.DType, head.Shape, emb.DType, emb.Shape)
	}
	if head.Storage == emb.Storage && head.Offset == emb.Offset && slices.Equal(head.Strides, emb.Strides) {
		return nil
	}
	hb, err := head.Bytes()
	if err != nil {
		return err
	}
	eb, err := emb.Bytes()
	if err != nil {
		return err
	}
	if !bytes.Equal(hb, eb) {
		return fmt.Errorf("tensor \"output_layer.weight\" differs from the embedding: untied heads are not supported")
	}
	return nil
}

// convertTorch reads t, optionally transposes its first and last axes (rank 2, or rank 3 with
// a middle axis of size 1), and converts it to dt.
func convertTorch(t *TorchTensor, dt dtypes.DType, transpose bool, out string) (*tensors.Tensor, error) {
	raw, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	dims := t.Shape
	if transpose {
		rows, cols := t.Shape[0], t.Shape[len(t.Shape)-1]
		raw = transpose2D(raw, rows, cols, t.DType.Size())
		dims = []int{cols, rows}
	}
	raw, err = convertRaw(raw, t.DType, dt)
	if err != nil {
		return nil, fmt.Errorf("weights: tensor %s → %s: %w", t.Name, out, err)
	}
	return fromBytes(shapes.Make(dt, dims...), raw)
}

// stackTorch transposes each [rows, cols] tensor and stacks them into [len(ts), cols, rows].
func stackTorch(ts []*TorchTensor, dt dtypes.DType, out string) (*tensors.Tensor, error) {
	rows, cols := ts[0].Shape[0], ts[0].Shape[1]
	res := tensors.FromShape(shapes.Make(dt, len(ts), cols, rows))
	per := rows * cols * dt.Size()
	if per == 0 {
		return res, nil
	}
	var ferr error
	err := res.MutableBytes(func(dst []byte) {
		for i, t := range ts {
			raw, err := t.Bytes()
			if err != nil {
				ferr = err
				return
			}
			raw = transpose2D(raw, rows, cols, t.DType.Size())
			if raw, err = convertRaw(raw, t.DType, dt); err != nil {
				ferr = fmt.Errorf("weights: tensor %s → %s: %w", t.Name, out, err)
				return
			}
			copy(dst[i*per:(i+1)*per], raw)
		}
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		res.FinalizeAll()
		return nil, err
	}
	return res, nil
}
