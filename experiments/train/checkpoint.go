package train

import (
	"blackmamba/bm/weights"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Checkpoints are the project's safetensors files (bm/weights). The training loop adds the
// metadata key MetaDataSHA256 (hex SHA-256 of the tensors' data) so that a damaged file is
// detected.
const (
	MetaDataSHA256 = "data_sha256"
	ckptPrefix     = "checkpoint-"
	ckptSuffix     = ".safetensors"
)

// SaveCheckpoint writes ts and meta to path atomically (bm/weights.Save: a temporary file in
// the same directory, synced, renamed over path, directory synced), adding MetaDataSHA256, the
// SHA-256 of the tensors' bytes in name order, which LoadCheckpoint verifies.
func SaveCheckpoint(path string, ts map[string]*tensors.Tensor, meta map[string]string) error {
	m := make(map[string]string, len(meta)+1)
	for k, v := range meta {
		m[k] = v
	}
	sum, err := dataSHA256(ts)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	m[MetaDataSHA256] = sum
	if err := weights.Save(path, ts, m); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	return nil
}

// LoadCheckpoint reads a checkpoint written by SaveCheckpoint (bm/weights.Load validates the
// header, the dtypes, shapes and offsets, and reports truncation), and, when the metadata has
// MetaDataSHA256, checks the data against it.
func LoadCheckpoint(path string) (map[string]*tensors.Tensor, map[string]string, error) {
	ts, meta, err := weights.Load(path)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if want, ok := meta[MetaDataSHA256]; ok {
		got, err := dataSHA256(ts)
		if err != nil {
			return nil, nil, fmt.Errorf("checkpoint %s: %w", path, err)
		}
		if got != want {
			return nil, nil, fmt.Errorf("checkpoint %s: data checksum mismatch (file damaged): sha256 %s, metadata says %s", path, got, want)
		}
	}
	return ts, meta, nil
}

// dataSHA256 is the hex SHA-256 of the tensors' raw bytes, concatenated in name order.
func dataSHA256(ts map[string]*tensors.Tensor) (string, error) {
	names := make([]string, 0, len(ts))
	for n := range ts {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		if err := ts[n].ConstBytes(func(b []byte) { h.Write(b) }); err != nil {
			return "", fmt.Errorf("tensor %q: %w", n, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

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

// RemoveUnfinished deletes the temporary files that checkpoint writes cut short (a killed
// process) left in dir, and returns their paths. A checkpoint is written to a hidden temporary
// file renamed over its name when complete, so such a file never holds a usable checkpoint.
func RemoveUnfinished(dir string) ([]string, error) {
	tmps, err := filepath.Glob(filepath.Join(dir, "."+ckptPrefix+"*"+ckptSuffix+".tmp-*"))
	if err != nil {
		return nil, err
	}
	for _, p := range tmps {
		if err := os.Remove(p); err != nil {
			return nil, err
		}
	}
	return tmps, nil
}

// writeAll is io.Writer's Write that reports short writes as errors.
func writeAll(w io.Writer, b []byte) error {
	n, err := w.Write(b)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	return err
}
