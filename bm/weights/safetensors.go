package weights

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// maxHeaderBytes bounds the JSON header of a safetensors file (the reference implementation
// uses the same limit); a larger value means a corrupt or hostile file.
const maxHeaderBytes = 100 << 20

// metadataKey is the reserved header entry holding string metadata.
const metadataKey = "__metadata__"

// Entry describes one tensor of a safetensors file.
type Entry struct {
	Name  string
	DType dtypes.DType
	Shape []int
	// Begin and End delimit the tensor's bytes in the data section, which starts right after
	// the header.
	Begin, End int64
}

// File is an open safetensors file whose header has been read and checked. Tensor reads one
// tensor at a time; the File is safe for concurrent use.
type File struct {
	path      string
	f         *os.File
	dataStart int64
	names     []string
	entries   map[string]Entry
	meta      map[string]string
}

// Open reads and validates the header of the safetensors file at path: the header length, the
// JSON, every dtype and shape, every byte range (inside the file, of the size the shape needs, and
// not overlapping another). Errors name the file and the tensor or offset at fault; a truncated
// file is reported with the first tensor whose data is missing.
func Open(path string) (*File, error) {
	if err := checkHostEndian(); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	st, err := parseSafetensors(f, path)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return st, nil
}

func parseSafetensors(f *os.File, path string) (*File, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("weights: safetensors file %s: %s", path, fmt.Sprintf(format, args...))
	}
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	size := info.Size()
	var lenBuf [8]byte
	if _, err := io.ReadFull(f, lenBuf[:]); err != nil {
		return nil, bad("file has %d bytes, too short for the 8-byte header length", size)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > maxHeaderBytes {
		return nil, bad("header length %d (at offset 0) exceeds the %d-byte limit", n, maxHeaderBytes)
	}
	if int64(n) > size-8 {
		return nil, bad("header length %d (at offset 0) runs past the end of the %d-byte file (truncated?)", n, size)
	}
	header := make([]byte, n)
	if _, err := io.ReadFull(f, header); err != nil {
		return nil, bad("reading the %d-byte header at offset 8: %v", n, err)
	}
	dataStart := int64(8 + n)
	dataLen := size - dataStart
	st := &File{path: path, f: f, dataStart: dataStart, entries: map[string]Entry{}, meta: map[string]string{}}

	dec := json.NewDecoder(bytes.NewReader(header))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, bad("header (offset 8) is not a JSON object")
	}
	type rawEntry struct {
		DType       string  `json:"dtype"`
		Shape       []int64 `json:"shape"`
		DataOffsets []int64 `json:"data_offsets"`
	}
	seenMeta := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad("header JSON at byte %d: %v", 8+dec.InputOffset(), err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, bad("header JSON at byte %d: expected a tensor name", 8+dec.InputOffset())
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, bad("header entry %q: %v", name, err)
		}
		if name == metadataKey {
			if seenMeta {
				return nil, bad("header has two %q entries", metadataKey)
			}
			seenMeta = true
			if err := json.Unmarshal(raw, &st.meta); err != nil {
				return nil, bad("header entry %q must map strings to strings: %v", metadataKey, err)
			}
			continue
		}
		if _, dup := st.entries[name]; dup {
			return nil, bad("tensor %q appears twice in the header", name)
		}
		var re rawEntry
		rd := json.NewDecoder(bytes.NewReader(raw))
		rd.DisallowUnknownFields()
		if err := rd.Decode(&re); err != nil {
			return nil, bad("tensor %q: header entry: %v", name, err)
		}
		dt, ok := stDTypes[re.DType]
		if !ok {
			return nil, bad("tensor %q: unknown dtype %q", name, re.DType)
		}
		if re.Shape == nil {
			return nil, bad("tensor %q: missing shape", name)
		}
		dims := make([]int, len(re.Shape))
		for i, d := range re.Shape {
			if d < 0 || d > math.MaxInt {
				return nil, bad("tensor %q: invalid dimension %d in shape %v", name, d, re.Shape)
			}
			dims[i] = int(d)
		}
		need, err := numBytes(dt, dims)
		if err != nil {
			return nil, bad("tensor %q: %v", name, err)
		}
		if len(re.DataOffsets) != 2 {
			return nil, bad("tensor %q: data_offsets must be [begin, end], got %v", name, re.DataOffsets)
		}
		b, e := re.DataOffsets[0], re.DataOffsets[1]
		if b < 0 || e < b {
			return nil, bad("tensor %q: invalid data_offsets [%d, %d]", name, b, e)
		}
		if e-b != need {
			return nil, bad("tensor %q: data_offsets [%d, %d] hold %d bytes but %s%v needs %d", name, b, e, e-b, dt, dims, need)
		}
		if e > dataLen {
			return nil, bad("tensor %q: data [%d, %d) ends at file offset %d, past the end of the %d-byte file (truncated?)",
				name, b, e, dataStart+e, size)
		}
		st.entries[name] = Entry{Name: name, DType: dt, Shape: dims, Begin: b, End: e}
		st.names = append(st.names, name)
	}
	if _, err := dec.Token(); err != nil {
		return nil, bad("header JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("header JSON has trailing data after the object")
	}
	sort.Strings(st.names)

	// Byte ranges must not overlap.
	byBegin := make([]Entry, 0, len(st.entries))
	for _, e := range st.entries {
		byBegin = append(byBegin, e)
	}
	sort.Slice(byBegin, func(i, j int) bool {
		if byBegin[i].Begin != byBegin[j].Begin {
			return byBegin[i].Begin < byBegin[j].Begin
		}
		if byBegin[i].End != byBegin[j].End {
			return byBegin[i].End < byBegin[j].End
		}
		return byBegin[i].Name < byBegin[j].Name
	})
	for i := 1; i < len(byBegin); i++ {
		prev, cur := byBegin[i-1], byBegin[i]
		if cur.Begin < prev.End {
			return nil, bad("tensors %q [%d, %d) and %q [%d, %d) overlap", prev.Name, prev.Begin, prev.End, cur.Name, cur.Begin, cur.End)
		}
	}
	return st, nil
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Names returns the tensor names in sorted order.
func (f *File) Names() []string { return append([]string(nil), f.names...) }

// Entry returns the header entry of the named tensor.
func (f *File) Entry(name string) (Entry, bool) {
	e, ok := f.entries[name]
	return e, ok
}

// Metadata returns the header's string metadata (empty if none).
func (f *File) Metadata() map[string]string {
	m := make(map[string]string, len(f.meta))
	for k, v := range f.meta {
		m[k] = v
	}
	return m
}

// Tensor reads the named tensor from the file.
func (f *File) Tensor(name string) (*tensors.Tensor, error) {
	e, ok := f.entries[name]
	if !ok {
		return nil, fmt.Errorf("weights: safetensors file %s has no tensor %q", f.path, name)
	}
	t := tensors.FromShape(shapes.Make(e.DType, e.Shape...))
	if e.End == e.Begin {
		return t, nil
	}
	var readErr error
	err := t.MutableBytes(func(b []byte) {
		_, readErr = f.f.ReadAt(b, f.dataStart+e.Begin)
	})
	if err == nil {
		err = readErr
	}
	if err != nil {
		t.FinalizeAll()
		return nil, fmt.Errorf("weights: safetensors file %s: reading tensor %q at offset %d: %w", f.path, name, f.dataStart+e.Begin, err)
	}
	return t, nil
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// Load reads every tensor of the safetensors file at path, and its metadata.
func Load(path string) (map[string]*tensors.Tensor, map[string]string, error) {
	f, err := Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	ts := make(map[string]*tensors.Tensor, len(f.names))
	for _, name := range f.names {
		t, err := f.Tensor(name)
		if err != nil {
			for _, t := range ts {
				t.FinalizeAll()
			}
			return nil, nil, err
		}
		ts[name] = t
	}
	return ts, f.Metadata(), nil
}

// Spec describes one tensor for SaveStream.
type Spec struct {
	Name  string
	Shape shapes.Shape
	// Read returns the tensor when it is written; its shape must be Shape.
	Read func() (*tensors.Tensor, error)
	// Free finalizes the tensor returned by Read once written, to release its memory.
	Free bool
}

// Save writes ts and meta to path as a safetensors file; see SaveStream.
func Save(path string, ts map[string]*tensors.Tensor, meta map[string]string) error {
	specs := make([]Spec, 0, len(ts))
	for name, t := range ts {
		if t == nil {
			return fmt.Errorf("weights: saving %s: tensor %q is nil", path, name)
		}
		specs = append(specs, Spec{Name: name, Shape: t.Shape(), Read: func() (*tensors.Tensor, error) { return t, nil }})
	}
	return SaveStream(path, specs, meta)
}

// SaveStream writes a safetensors file holding the tensors of specs (sorted by name, packed
// without gaps) and the string metadata meta, reading one tensor at a time so that a model larger
// than the free memory can be converted. The file is written atomically: to a temporary file in
// the same directory, synced, renamed over path, and the directory synced; a failure leaves any
// previous file at path untouched. The same inputs always produce the same bytes.
func SaveStream(path string, specs []Spec, meta map[string]string) (err error) {
	if err := checkHostEndian(); err != nil {
		return err
	}
	specs = append([]Spec(nil), specs...)
	sort.Slice(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	header := map[string]any{}
	if len(meta) > 0 {
		header[metadataKey] = meta
	}
	var offset int64
	for i, s := range specs {
		if s.Name == "" || s.Name == metadataKey {
			return fmt.Errorf("weights: saving %s: invalid tensor name %q", path, s.Name)
		}
		if i > 0 && specs[i-1].Name == s.Name {
			return fmt.Errorf("weights: saving %s: tensor %q given twice", path, s.Name)
		}
		dt, err := stName(s.Shape.DType)
		if err != nil {
			return fmt.Errorf("weights: saving %s: tensor %q: %w", path, s.Name, err)
		}
		n, err := numBytes(s.Shape.DType, s.Shape.Dimensions)
		if err != nil {
			return fmt.Errorf("weights: saving %s: tensor %q: %w", path, s.Name, err)
		}
		dims := s.Shape.Dimensions
		if dims == nil {
			dims = []int{}
		}
		header[s.Name] = map[string]any{"dtype": dt, "shape": dims, "data_offsets": [2]int64{offset, offset + n}}
		offset += n
	}
	hdr, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	for len(hdr)%8 != 0 {
		hdr = append(hdr, ' ')
	}

	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 4<<20)
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
	if _, err = w.Write(lenBuf[:]); err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	if _, err = w.Write(hdr); err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	for _, s := range specs {
		var t *tensors.Tensor
		t, err = s.Read()
		if err != nil {
			return fmt.Errorf("weights: saving %s: tensor %q: %w", path, s.Name, err)
		}
		if !t.Shape().Equal(s.Shape) {
			err = fmt.Errorf("weights: saving %s: tensor %q has shape %s, expected %s", path, s.Name, t.Shape(), s.Shape)
			return err
		}
		var werr error
		err = tensorBytes(t, func(b []byte) { _, werr = w.Write(b) })
		if err == nil {
			err = werr
		}
		if s.Free {
			t.FinalizeAll()
		}
		if err != nil {
			return fmt.Errorf("weights: saving %s: tensor %q: %w", path, s.Name, err)
		}
	}
	if err = w.Flush(); err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("weights: saving %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir flushes a directory entry change (a rename) to disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("weights: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("weights: syncing directory %s: %w", dir, err)
	}
	return nil
}
