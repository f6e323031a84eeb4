package train

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Checkpoints are safetensors files: an 8-byte little-endian header length, a JSON header
// mapping each tensor name to {dtype, shape, data_offsets} plus a "__metadata__" map of
// strings, then the raw little-endian tensor data. The training loop adds the metadata key
// MetaDataSHA256 (hex SHA-256 of the data section) so that a damaged file is detected.
const (
	MetaDataSHA256 = "data_sha256"
	ckptPrefix     = "checkpoint-"
	ckptSuffix     = ".safetensors"
)

var safetensorsDTypes = map[dtypes.DType]string{
	dtypes.Float64: "F64", dtypes.Float32: "F32", dtypes.BFloat16: "BF16", dtypes.Float16: "F16",
	dtypes.Int64: "I64", dtypes.Int32: "I32", dtypes.Int16: "I16", dtypes.Int8: "I8",
	dtypes.Uint64: "U64", dtypes.Uint32: "U32", dtypes.Uint16: "U16", dtypes.Uint8: "U8",
	dtypes.Bool: "BOOL",
}

type stEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// SaveCheckpoint writes ts and meta to path atomically: it writes a temporary file in the same
// directory, syncs it, renames it over path and syncs the directory. A crash leaves either
// the previous file or the new one, never a partial file under path.
func SaveCheckpoint(path string, ts map[string]*tensors.Tensor, meta map[string]string) error {
	names := make([]string, 0, len(ts))
	for n := range ts {
		names = append(names, n)
	}
	sort.Strings(names)
	header := map[string]any{}
	var data bytes.Buffer
	for _, n := range names {
		t := ts[n]
		code, ok := safetensorsDTypes[t.DType()]
		if !ok {
			return fmt.Errorf("checkpoint %s: tensor %q has dtype %s, which safetensors cannot store", path, n, t.DType())
		}
		start := int64(data.Len())
		if err := t.ConstBytes(func(b []byte) { data.Write(b) }); err != nil {
			return fmt.Errorf("checkpoint %s: reading tensor %q: %w", path, n, err)
		}
		dims := t.Shape().Dimensions
		if dims == nil {
			dims = []int{}
		}
		header[n] = stEntry{DType: code, Shape: dims, Offsets: [2]int64{start, int64(data.Len())}}
	}
	sum := sha256.Sum256(data.Bytes())
	m := map[string]string{}
	for k, v := range meta {
		m[k] = v
	}
	m[MetaDataSHA256] = hex.EncodeToString(sum[:])
	header["__metadata__"] = m
	hb, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("checkpoint %s: encoding header: %w", path, err)
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hb)))
	for _, part := range [][]byte{lenBuf[:], hb, data.Bytes()} {
		if _, err := f.Write(part); err != nil {
			return fail(err)
		}
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// LoadCheckpoint reads a file written by SaveCheckpoint (or any safetensors file). It checks
// that the header is complete, that every tensor lies inside the file, that the file is not
// truncated or padded, and, when the metadata has MetaDataSHA256, the data checksum.
func LoadCheckpoint(path string) (map[string]*tensors.Tensor, map[string]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: %w", err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("checkpoint %s: %s", path, fmt.Sprintf(format, args...))
	}
	if len(raw) < 8 {
		return nil, nil, bad("truncated: %d bytes, shorter than the 8-byte header length", len(raw))
	}
	hlen := binary.LittleEndian.Uint64(raw[:8])
	if hlen > uint64(len(raw)-8) {
		return nil, nil, bad("truncated: header length %d at offset 0 exceeds the %d bytes that follow", hlen, len(raw)-8)
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(raw[8:8+hlen], &header); err != nil {
		return nil, nil, bad("malformed JSON header (bytes 8..%d): %v", 8+hlen, err)
	}
	data := raw[8+hlen:]
	meta := map[string]string{}
	if m, ok := header["__metadata__"]; ok {
		if err := json.Unmarshal(m, &meta); err != nil {
			return nil, nil, bad("malformed __metadata__: %v", err)
		}
		delete(header, "__metadata__")
	}
	codeToDType := map[string]dtypes.DType{}
	for dt, code := range safetensorsDTypes {
		codeToDType[code] = dt
	}
	var end int64
	ts := make(map[string]*tensors.Tensor, len(header))
	for name, rawEntry := range header {
		var e stEntry
		if err := json.Unmarshal(rawEntry, &e); err != nil {
			return nil, nil, bad("tensor %q: malformed entry: %v", name, err)
		}
		dt, ok := codeToDType[e.DType]
		if !ok {
			return nil, nil, bad("tensor %q: unsupported dtype %q", name, e.DType)
		}
		shape := shapes.Make(dt, e.Shape...)
		size := int64(shape.Memory())
		if e.Offsets[0] < 0 || e.Offsets[1]-e.Offsets[0] != size {
			return nil, nil, bad("tensor %q: data_offsets %v do not match shape %s (%d bytes)", name, e.Offsets, shape, size)
		}
		if e.Offsets[1] > int64(len(data)) {
			return nil, nil, bad("truncated: tensor %q needs data up to byte %d, the file has %d data bytes",
				name, e.Offsets[1], len(data))
		}
		end = max(end, e.Offsets[1])
		t := tensors.FromShape(shape)
		if err := t.MutableBytes(func(b []byte) { copy(b, data[e.Offsets[0]:e.Offsets[1]]) }); err != nil {
			return nil, nil, bad("tensor %q: %v", name, err)
		}
		ts[name] = t
	}
	if end != int64(len(data)) {
		return nil, nil, bad("data section has %d bytes, tensors use %d", len(data), end)
	}
	if want, ok := meta[MetaDataSHA256]; ok {
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != want {
			return nil, nil, bad("data checksum mismatch: got %s, header says %s (file damaged)", got, want)
		}
	}
	return ts, meta, nil
}

// checkpointPath returns the file name of the checkpoint of step in dir.
func checkpointPath(dir string, step int) string {
	return filepath.Join(dir, fmt.Sprintf("%s%08d%s", ckptPrefix, step, ckptSuffix))
}

// ListCheckpoints returns the checkpoint files in dir with their steps, newest first.
func ListCheckpoints(dir string) (paths []string, steps []int, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	type ck struct {
		path string
		step int
	}
	var cks []ck
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !strings.HasPrefix(n, ckptPrefix) || !strings.HasSuffix(n, ckptSuffix) {
			continue
		}
		s, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(n, ckptPrefix), ckptSuffix))
		if err != nil {
			continue
		}
		cks = append(cks, ck{filepath.Join(dir, n), s})
	}
	sort.Slice(cks, func(i, j int) bool { return cks[i].step > cks[j].step })
	for _, c := range cks {
		paths = append(paths, c.path)
		steps = append(steps, c.step)
	}
	return paths, steps, nil
}

// writeAll is io.Writer's Write that reports short writes as errors.
func writeAll(w io.Writer, b []byte) error {
	n, err := w.Write(b)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	return err
}
