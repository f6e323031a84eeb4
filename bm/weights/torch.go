package weights

import (
	"archive/zip"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/big"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// maxPickleBytes bounds the size of an archive's data.pkl (the pickled object tree without the
// tensor data; a few hundred kilobytes for a large model).
const maxPickleBytes = 256 << 20

// torchStorageTypes maps the storage classes torch.save names to dtypes.
var torchStorageTypes = map[string]dtypes.DType{
	"FloatStorage":    dtypes.Float32,
	"DoubleStorage":   dtypes.Float64,
	"HalfStorage":     dtypes.Float16,
	"BFloat16Storage": dtypes.BFloat16,
	"LongStorage":     dtypes.Int64,
	"IntStorage":      dtypes.Int32,
	"ShortStorage":    dtypes.Int16,
	"CharStorage":     dtypes.Int8,
	"ByteStorage":     dtypes.Uint8,
	"BoolStorage":     dtypes.Bool,
}

// The only callables an archive may name besides the storage classes.
var (
	globalOrderedDict    = pyGlobal{"collections", "OrderedDict"}
	globalRebuildTensor  = pyGlobal{"torch._utils", "_rebuild_tensor_v2"}
	globalRebuildParam   = pyGlobal{"torch._utils", "_rebuild_parameter"}
	allowedTorchCallable = map[pyGlobal]bool{globalOrderedDict: true, globalRebuildTensor: true, globalRebuildParam: true}
)

// TorchArchive is an open torch.save zip archive: its pickled object tree has been read and
// checked, and tensor data is read from the archive only when a tensor is converted.
type TorchArchive struct {
	Path    string
	prefix  string // the archive's top folder ("archive", or the file's base name)
	r       io.ReaderAt
	closer  io.Closer
	size    int64
	entries map[string]*zip.File
	root    any
	tensors map[string]*TorchTensor
	names   []string
	storage map[string]*torchStorage
}

// torchStorage is one storage (a zip entry holding raw little-endian elements).
type torchStorage struct {
	key   string
	dtype dtypes.DType
	numel int64
	entry *zip.File
}

// TorchTensor is a tensor of a torch archive: its dtype, shape and place in a storage.
type TorchTensor struct {
	Name    string // dotted path from the archive's top-level object, e.g. "model.decoder.final_layernorm.weight"
	DType   dtypes.DType
	Shape   []int
	Strides []int // in elements
	Offset  int64 // in elements, into the storage
	Storage string
	storage *torchStorage
	archive *TorchArchive
}

// ReadTorch opens the torch.save zip archive at path and reads its object tree. Only the
// globals a state dict needs are accepted (collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter and the torch.*Storage classes); any other is an error naming it.
// Close the archive when done.
func ReadTorch(path string) (*TorchArchive, error) {
	if err := checkHostEndian(); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("weights: %w", err)
	}
	a, err := readTorch(f, info.Size(), path)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	a.closer = f
	return a, nil
}

// readTorch reads an archive of size bytes from r; path names it in errors.
func readTorch(r io.ReaderAt, size int64, path string) (*TorchArchive, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("weights: torch archive %s: %s", path, fmt.Sprintf(format, args...))
	}
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return nil, bad("%v (a truncated file, or not a torch.save zip archive; files from the legacy non-zip format must be re-saved with a current torch.save)", err)
	}
	a := &TorchArchive{Path: path, r: r, size: size, entries: map[string]*zip.File{},
		tensors: map[string]*TorchTensor{}, storage: map[string]*torchStorage{}}
	var pkl *zip.File
	for _, e := range zr.File {
		if _, dup := a.entries[e.Name]; dup {
			return nil, bad("entry %q appears twice", e.Name)
		}
		a.entries[e.Name] = e
		if dir, base, ok := strings.Cut(e.Name, "/"); ok && base == "data.pkl" {
			if pkl != nil {
				return nil, bad("two pickles: %q and %q", pkl.Name, e.Name)
			}
			pkl, a.prefix = e, dir
		}
	}
	if pkl == nil {
		return nil, bad("no <name>/data.pkl entry: not a torch.save archive")
	}
	if bo, ok := a.entries[a.prefix+"/byteorder"]; ok {
		b, err := readEntry(bo, 16)
		if err != nil {
			return nil, bad("entry %s: %v", bo.Name, err)
		}
		if s := strings.TrimSpace(string(b)); s != "little" {
			return nil, bad("entry %s says byte order %q; only little-endian archives are supported", bo.Name, s)
		}
	}
	data, err := readEntry(pkl, maxPickleBytes)
	if err != nil {
		return nil, bad("entry %s: %v", pkl.Name, err)
	}
	root, err := unpickle(data, a.hooks())
	if err != nil {
		return nil, bad("entry %s: %v", pkl.Name, err)
	}
	a.root = root
	a.collect(root, "", 0, map[any]bool{})
	sort.Strings(a.names)
	return a, nil
}

// readEntry reads a whole zip entry of at most limit bytes, checking its CRC.
func readEntry(e *zip.File, limit int64) ([]byte, error) {
	if e.UncompressedSize64 > uint64(limit) {
		return nil, fmt.Errorf("%d bytes, more than the %d allowed", e.UncompressedSize64, limit)
	}
	r, err := e.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, limit))
}

// hooks returns the pickle callbacks that build a state dict.
func (a *TorchArchive) hooks() pickleHooks {
	return pickleHooks{
		global: func(module, name string) (any, error) {
			g := pyGlobal{module, name}
			if allowedTorchCallable[g] {
				return g, nil
			}
			if _, ok := torchStorageTypes[name]; ok && module == "torch" {
				return g, nil
			}
			return nil, fmt.Errorf("global %s is not allowed (only state dicts of tensors can be read)", g)
		},
		call: func(fn any, args pyTuple) (any, error) {
			g, _ := fn.(pyGlobal)
			switch g {
			case globalOrderedDict:
				if len(args) != 0 {
					return nil, fmt.Errorf("%s called with %d arguments, want none", g, len(args))
				}
				return newPyDict(), nil
			case globalRebuildTensor:
				return a.rebuildTensor(args)
			case globalRebuildParam:
				if len(args) < 1 {
					return nil, fmt.Errorf("%s needs the tensor argument", g)
				}
				t, ok := args[0].(*TorchTensor)
				if !ok {
					return nil, fmt.Errorf("%s of a %s, not a tensor", g, pyTypeName(args[0]))
				}
				return t, nil
			}
			return nil, fmt.Errorf("calling %s is not allowed", pyTypeName(fn))
		},
		build: func(obj, state any) error {
			d, ok := obj.(*pyDict)
			if !ok {
				return fmt.Errorf("setting the state of a %s is not allowed", pyTypeName(obj))
			}
			d.state = state
			return nil
		},
		persistentLoad: a.persistentLoad,
	}
}

// asInt returns v as an int64 if it is a Python int that fits.
func asInt(v any) (int64, bool) {
	switch v := v.(type) {
	case int64:
		return v, true
	case bool:
		if v {
			return 1, true
		}
		return 0, true
	case *big.Int:
		return 0, false
	}
	return 0, false
}

// persistentLoad resolves ('storage', torch.XStorage, key, location, numel) to a storage.
func (a *TorchArchive) persistentLoad(pid any) (any, error) {
	t, ok := pid.(pyTuple)
	if !ok || len(t) != 5 {
		return nil, fmt.Errorf("persistent id must be a 5-tuple ('storage', type, key, location, numel), got %s", pyTypeName(pid))
	}
	if s, _ := t[0].(string); s != "storage" {
		return nil, fmt.Errorf("persistent id kind %v, want 'storage'", t[0])
	}
	g, ok := t[1].(pyGlobal)
	dt, known := torchStorageTypes[g.Name]
	if !ok || !known || g.Module != "torch" {
		return nil, fmt.Errorf("storage type %s is not a torch storage class", pyTypeName(t[1]))
	}
	key, ok := t[2].(string)
	if !ok {
		if k, isInt := asInt(t[2]); isInt {
			key, ok = strconv.FormatInt(k, 10), true
		}
	}
	if !ok || key == "" || strings.ContainsAny(key, "/\\") {
		return nil, fmt.Errorf("storage key %v is not a plain name", t[2])
	}
	numel, ok := asInt(t[4])
	if !ok || numel < 0 {
		return nil, fmt.Errorf("storage %s: invalid element count %v", key, t[4])
	}
	if s, seen := a.storage[key]; seen {
		if s.dtype != dt || s.numel != numel {
			return nil, fmt.Errorf("storage %s is used both as %d×%s and %d×%s", key, s.numel, s.dtype, numel, dt)
		}
		return s, nil
	}
	name := a.prefix + "/data/" + key
	e, ok := a.entries[name]
	if !ok {
		return nil, fmt.Errorf("storage %s: the archive has no entry %s", key, name)
	}
	if numel > math.MaxInt64/int64(dt.Size()) || e.UncompressedSize64 != uint64(numel)*uint64(dt.Size()) {
		return nil, fmt.Errorf("storage %s: entry %s has %d bytes, but %d elements of %s need %d", key, name, e.UncompressedSize64, numel, dt, numel*int64(dt.Size()))
	}
	if e.Method == zip.Store {
		off, err := e.DataOffset()
		if err != nil {
			return nil, fmt.Errorf("storage %s: entry %s: %v", key, name, err)
		}
		if off < 0 || off+int64(e.CompressedSize64) > a.size {
			return nil, fmt.Errorf("storage %s: entry %s runs from offset %d to %d, past the end of the %d-byte file (truncated?)",
				key, name, off, off+int64(e.CompressedSize64), a.size)
		}
	}
	s := &torchStorage{key: key, dtype: dt, numel: numel, entry: e}
	a.storage[key] = s
	return s, nil
}

// rebuildTensor implements torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
// stride, requires_grad, backward_hooks[, metadata]).
func (a *TorchArchive) rebuildTensor(args pyTuple) (any, error) {
	if len(args) < 4 || len(args) > 7 {
		return nil, fmt.Errorf("_rebuild_tensor_v2 with %d arguments, want 6 or 7", len(args))
	}
	s, ok := args[0].(*torchStorage)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor_v2: first argument is a %s, not a storage", pyTypeName(args[0]))
	}
	offset, ok := asInt(args[1])
	if !ok || offset < 0 {
		return nil, fmt.Errorf("_rebuild_tensor_v2: invalid storage offset %v", args[1])
	}
	ints := func(v any, what string) ([]int, error) {
		t, ok := v.(pyTuple)
		if !ok {
			return nil, fmt.Errorf("_rebuild_tensor_v2: %s is a %s, not a tuple", what, pyTypeName(v))
		}
		out := make([]int, len(t))
		for i, x := range t {
			n, ok := asInt(x)
			if !ok || n < 0 || n > math.MaxInt32*int64(1<<16) {
				return nil, fmt.Errorf("_rebuild_tensor_v2: %s %v has an invalid entry %v", what, t, x)
			}
			out[i] = int(n)
		}
		return out, nil
	}
	size, err := ints(args[2], "size")
	if err != nil {
		return nil, err
	}
	stride, err := ints(args[3], "stride")
	if err != nil {
		return nil, err
	}
	if len(size) != len(stride) {
		return nil, fmt.Errorf("_rebuild_tensor_v2: size %v and stride %v differ in length", size, stride)
	}
	numel, err := numBytes(dtypes.Uint8, size)
	if err != nil {
		return nil, fmt.Errorf("_rebuild_tensor_v2: %v", err)
	}
	if numel > s.numel {
		return nil, fmt.Errorf("tensor of size %v has more elements than its storage %s (%d): overlapping views are not supported", size, s.key, s.numel)
	}
	if numel > 0 {
		last := big.NewInt(offset)
		for i := range size {
			last.Add(last, new(big.Int).Mul(big.NewInt(int64(size[i]-1)), big.NewInt(int64(stride[i]))))
		}
		if !last.IsInt64() || last.Int64() >= s.numel {
			return nil, fmt.Errorf("tensor of size %v, stride %v, offset %d reaches element %v of storage %s, which has %d",
				size, stride, offset, last, s.key, s.numel)
		}
	}
	return &TorchTensor{DType: s.dtype, Shape: size, Strides: stride, Offset: offset, Storage: s.key, storage: s, archive: a}, nil
}

// collect records every tensor reachable from v under dotted names.
func (a *TorchArchive) collect(v any, name string, depth int, seen map[any]bool) {
	if depth > 64 {
		return
	}
	join := func(k string) string {
		if name == "" {
			return k
		}
		return name + "." + k
	}
	switch v := v.(type) {
	case *TorchTensor:
		if _, dup := a.tensors[name]; dup {
			return
		}
		t := *v
		t.Name = name
		a.tensors[name] = &t
		a.names = append(a.names, name)
	case *pyDict:
		if seen[v] {
			return
		}
		seen[v] = true
		for _, k := range v.keys {
			a.collect(v.m[k], join(fmt.Sprint(k)), depth+1, seen)
		}
		delete(seen, v)
	case *pyList:
		if seen[v] {
			return
		}
		seen[v] = true
		for i, x := range v.items {
			a.collect(x, join(strconv.Itoa(i)), depth+1, seen)
		}
		delete(seen, v)
	case pyTuple:
		for i, x := range v {
			a.collect(x, join(strconv.Itoa(i)), depth+1, seen)
		}
	}
}

// Names returns the dotted names of all tensors in the archive, sorted.
func (a *TorchArchive) Names() []string { return append([]string(nil), a.names...) }

// Tensor returns the named tensor, or nil.
func (a *TorchArchive) Tensor(name string) *TorchTensor { return a.tensors[name] }

// Close closes the archive's file.
func (a *TorchArchive) Close() error {
	if a.closer == nil {
		return nil
	}
	return a.closer.Close()
}

// contiguous reports whether the strides are the row-major ones of the shape.
func (t *TorchTensor) contiguous() bool {
	want := 1
	for i := len(t.Shape) - 1; i >= 0; i-- {
		if t.Shape[i] != 1 && t.Strides[i] != want {
			return false
		}
		want *= t.Shape[i]
	}
	return true
}

// readStorage reads elements [from, to) of the tensor's storage.
func (t *TorchTensor) readStorage(from, to int64) ([]byte, error) {
	s := t.storage
	es := int64(s.dtype.Size())
	buf := make([]byte, (to-from)*es)
	if len(buf) == 0 {
		return buf, nil
	}
	e := s.entry
	whole := from == 0 && to == s.numel
	if e.Method == zip.Store {
		off, err := e.DataOffset()
		if err != nil {
			return nil, err
		}
		if _, err := t.archive.r.ReadAt(buf, off+from*es); err != nil {
			return nil, fmt.Errorf("reading entry %s at file offset %d: %w", e.Name, off+from*es, err)
		}
		if whole && crc32.ChecksumIEEE(buf) != e.CRC32 {
			return nil, fmt.Errorf("entry %s fails its CRC check (corrupt file)", e.Name)
		}
		return buf, nil
	}
	r, err := e.Open()
	if err != nil {
		return nil, fmt.Errorf("entry %s: %w", e.Name, err)
	}
	defer r.Close()
	if _, err := io.CopyN(io.Discard, r, from*es); err != nil {
		return nil, fmt.Errorf("entry %s: %w", e.Name, err)
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("entry %s: %w", e.Name, err)
	}
	return buf, nil
}

// Bytes reads the tensor's elements from the archive in row-major order (raw little-endian).
func (t *TorchTensor) Bytes() ([]byte, error) {
	numel, _ := numBytes(dtypes.Uint8, t.Shape)
	es := int64(t.DType.Size())
	if numel == 0 {
		return []byte{}, nil
	}
	if t.contiguous() {
		b, err := t.readStorage(t.Offset, t.Offset+numel)
		if err != nil {
			return nil, fmt.Errorf("weights: torch archive %s: tensor %s: %w", t.archive.Path, t.Name, err)
		}
		return b, nil
	}
	// Strided: read the span the tensor touches and gather.
	last := t.Offset
	for i := range t.Shape {
		last += int64(t.Shape[i]-1) * int64(t.Strides[i])
	}
	span, err := t.readStorage(t.Offset, last+1)
	if err != nil {
		return nil, fmt.Errorf("weights: torch archive %s: tensor %s: %w", t.archive.Path, t.Name, err)
	}
	out := make([]byte, numel*es)
	idx := make([]int, len(t.Shape))
	for n := int64(0); n < numel; n++ {
		var src int64
		for i, x := range idx {
			src += int64(x) * int64(t.Strides[i])
		}
		copy(out[n*es:(n+1)*es], span[src*es:(src+1)*es])
		for i := len(idx) - 1; i >= 0; i-- {
			idx[i]++
			if idx[i] < t.Shape[i] {
				break
			}
			idx[i] = 0
		}
	}
	return out, nil
}

// Tensor reads the tensor from the archive into a GoMLX tensor of the same dtype and shape.
func (t *TorchTensor) Tensor() (*tensors.Tensor, error) {
	b, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	return fromBytes(shapes.Make(t.DType, t.Shape...), b)
}
