package weights

import (
	"archive/zip"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
)

// fuzzArchive returns an in-memory archive with a few storages for the fuzzed pickles to use.
func fuzzArchive(f *testing.F) *TorchArchive {
	ts := []fakeTensor{
		{name: "a", storageType: "FloatStorage", key: "0", shape: []int{4, 6}, numel: 24, data: encode(pattern(24, 1), dtypes.Float32)},
		{name: "b", storageType: "BFloat16Storage", key: "1", shape: []int{3}, numel: 3, data: encode(pattern(3, 2), dtypes.BFloat16)},
	}
	path := filepath.Join(f.TempDir(), "fuzz.pt")
	writeTorchArchive(f, path, ts, archiveOpts{})
	data, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	a, err := readTorch(bytes.NewReader(data), int64(len(data)), "fuzz.pt")
	if err != nil {
		f.Fatal(err)
	}
	return a
}

// FuzzPickle runs the pickle reader with torch.save's hooks on arbitrary bytes: it must return
// a value or an error, never panic, and any tensor it builds must read within its storage.
// Seeds: the pickles of the synthetic archives and of the PyTorch-written fixture
// (testdata/fuzz/FuzzPickle holds more).
func FuzzPickle(f *testing.F) {
	base := fuzzArchive(f)
	f.Add(torchPickle([]fakeTensor{{name: "w", storageType: "FloatStorage", key: "0", shape: []int{2, 3}, offset: 6, numel: 24}}, false))
	f.Add(torchPickle([]fakeTensor{{name: "t", storageType: "FloatStorage", key: "0", shape: []int{6, 4}, strides: []int{1, 6}, numel: 24},
		{name: "b", storageType: "BFloat16Storage", key: "1", shape: []int{3}, numel: 3}}, true))
	if z, err := zip.OpenReader(filepath.Join("testdata", "fixture", ReleasedWeights)); err == nil {
		for _, e := range z.File {
			if filepath.Base(e.Name) == "data.pkl" {
				if b, err := readEntry(e, maxPickleBytes); err == nil {
					f.Add(b)
				}
			}
		}
		_ = z.Close()
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &TorchArchive{Path: base.Path, prefix: base.prefix, r: base.r, size: base.size, entries: base.entries,
			tensors: map[string]*TorchTensor{}, storage: map[string]*torchStorage{}}
		root, err := unpickle(data, a.hooks())
		if err != nil {
			return
		}
		a.collect(root, "", 0, map[any]bool{})
		for _, n := range a.Names() {
			x := a.Tensor(n)
			b, err := x.Bytes()
			if err != nil {
				t.Fatalf("tensor %s of a valid pickle does not read: %v", n, err)
			}
			numel, _ := numBytes(dtypes.Uint8, x.Shape)
			if int64(len(b)) != numel*int64(x.DType.Size()) {
				t.Fatalf("tensor %s: %d bytes for shape %v", n, len(b), x.Shape)
			}
		}
	})
}
