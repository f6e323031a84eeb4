package weights

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"os"
	"testing"
)

// This file writes torch.save-style zip archives for tests: a pickle writer for the opcodes
// torch.save uses with protocol 2, and the zip layout around it.

type pickler struct {
	b       bytes.Buffer
	memo    int
	globals map[string]int // memo slot of each global already written
}

func newPickler() *pickler { return &pickler{globals: map[string]int{}} }

func (p *pickler) op(b ...byte) { p.b.Write(b) }

func (p *pickler) put() {
	if p.memo < 256 {
		p.op('q', byte(p.memo))
	} else {
		p.op('r')
		_ = binary.Write(&p.b, binary.LittleEndian, uint32(p.memo))
	}
	p.memo++
}

func (p *pickler) get(i int) {
	if i < 256 {
		p.op('h', byte(i))
	} else {
		p.op('j')
		_ = binary.Write(&p.b, binary.LittleEndian, uint32(i))
	}
}

func (p *pickler) str(s string) {
	p.op('X')
	_ = binary.Write(&p.b, binary.LittleEndian, uint32(len(s)))
	p.b.WriteString(s)
	p.put()
}

func (p *pickler) int(v int64) {
	switch {
	case v >= 0 && v < 256:
		p.op('K', byte(v))
	case v >= 0 && v < 65536:
		p.op('M')
		_ = binary.Write(&p.b, binary.LittleEndian, uint16(v))
	case v >= -1<<31 && v < 1<<31:
		p.op('J')
		_ = binary.Write(&p.b, binary.LittleEndian, int32(v))
	default:
		p.op(0x8a, 8)
		_ = binary.Write(&p.b, binary.LittleEndian, v)
	}
}

func (p *pickler) global(module, name string) {
	key := module + "." + name
	if i, ok := p.globals[key]; ok {
		p.get(i)
		return
	}
	p.op('c')
	p.b.WriteString(module + "\n" + name + "\n")
	p.globals[key] = p.memo
	p.put()
}

func (p *pickler) orderedDict() {
	p.global("collections", "OrderedDict")
	p.op(')', 'R')
	p.put()
}

func (p *pickler) intTuple(xs []int) {
	switch len(xs) {
	case 0:
		p.op(')')
		return
	case 1, 2, 3:
		for _, x := range xs {
			p.int(int64(x))
		}
		p.op(0x85 + byte(len(xs)-1))
	default:
		p.op('(')
		for _, x := range xs {
			p.int(int64(x))
		}
		p.op('t')
	}
	p.put()
}

// fakeTensor is one tensor of a test archive and its storage.
type fakeTensor struct {
	name        string
	storageType string // "FloatStorage", "BFloat16Storage", ...
	key         string // storage key; tensors may share one
	shape       []int
	strides     []int // nil: contiguous
	offset      int
	numel       int    // storage elements
	data        []byte // storage bytes
}

// archiveOpts varies the archive layout.
type archiveOpts struct {
	prefix      string          // top folder, "archive" when empty
	flat        bool            // state dict at the top level instead of under "model"
	byteorder   string          // contents of the byteorder entry; none when empty
	skipStorage map[string]bool // storages left out of the zip
	deflate     bool            // compress the storages
	editPickle  func([]byte) []byte
}

func contiguousStrides(shape []int) []int {
	s := make([]int, len(shape))
	acc := 1
	for i := len(shape) - 1; i >= 0; i-- {
		s[i] = acc
		acc *= shape[i]
	}
	return s
}

// torchPickle writes the data.pkl of a state dict holding ts.
func torchPickle(ts []fakeTensor, flat bool) []byte {
	p := newPickler()
	p.op(0x80, 2)
	if !flat {
		p.op('}')
		p.put()
		p.str("model")
	}
	p.orderedDict()
	p.op('(')
	for _, t := range ts {
		p.str(t.name)
		p.global("torch._utils", "_rebuild_tensor_v2")
		p.op('(')
		p.op('(')
		p.str("storage")
		p.global("torch", t.storageType)
		p.str(t.key)
		p.str("cpu")
		p.int(int64(t.numel))
		p.op('t')
		p.put()
		p.op('Q')
		p.put()
		p.int(int64(t.offset))
		p.intTuple(t.shape)
		strides := t.strides
		if strides == nil {
			strides = contiguousStrides(t.shape)
		}
		p.intTuple(strides)
		p.op(0x89)
		p.orderedDict()
		p.op('t')
		p.put()
		p.op('R')
		p.put()
	}
	p.op('u')
	// The state dict's _metadata attribute, as nn.Module.state_dict sets it.
	p.op('}')
	p.put()
	p.str("_metadata")
	p.orderedDict()
	p.op('s', 'b')
	if !flat {
		p.op('s')
	}
	p.op('.')
	return p.b.Bytes()
}

// writeTorchArchive writes a torch.save-style zip archive holding ts.
func writeTorchArchive(t testing.TB, path string, ts []fakeTensor, o archiveOpts) {
	t.Helper()
	prefix := o.prefix
	if prefix == "" {
		prefix = "archive"
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	add := func(name string, data []byte, deflate bool) {
		method := zip.Store
		if deflate {
			method = zip.Deflate
		}
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	pkl := torchPickle(ts, o.flat)
	if o.editPickle != nil {
		pkl = o.editPickle(pkl)
	}
	add(prefix+"/data.pkl", pkl, false)
	if o.byteorder != "" {
		add(prefix+"/byteorder", []byte(o.byteorder), false)
	}
	written := map[string]bool{}
	for _, ft := range ts {
		if written[ft.key] || o.skipStorage[ft.key] {
			continue
		}
		written[ft.key] = true
		add(prefix+"/data/"+ft.key, ft.data, o.deflate)
	}
	add(prefix+"/version", []byte("3\n"), false)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}
