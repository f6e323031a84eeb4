package weights

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"blackmamba/bm"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Checkpoint metadata keys written by SaveModel.
const (
	MetaConfig = "config" // the bm.Config as JSON
	MetaFormat = "format" // FormatName
	MetaSource = "source" // base name of the file the weights were imported from, if any
)

// FormatName identifies checkpoints holding a bm model.
const FormatName = "blackmamba"

// File names inside a model directory.
const (
	ConfigFile      = "config.json"
	CheckpointFile  = "model.safetensors"
	ReleasedWeights = "pytorch_model.bin"
)

// ParseConfig decodes a configuration file's bytes: a bm.Config JSON (fields left out take the
// "small" preset's defaults) or a released BlackMamba config.json (recognized by its
// "mamba_moe_layers" field). name is used in errors.
func ParseConfig(data []byte, name string) (bm.Config, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return bm.Config{}, fmt.Errorf("weights: config %s: %w", name, err)
	}
	if _, released := probe["mamba_moe_layers"]; released {
		c, err := ConfigFromReleased(data)
		if err != nil {
			return c, fmt.Errorf("%w (file %s)", err, name)
		}
		return c, nil
	}
	c := bm.MustPreset("small")
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return bm.Config{}, fmt.Errorf("weights: config %s: %w", name, err)
	}
	if err := c.Validate(); err != nil {
		return bm.Config{}, fmt.Errorf("weights: config %s: %w", name, err)
	}
	return c, nil
}

// ReadConfig reads a configuration file (see ParseConfig).
func ReadConfig(path string) (bm.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return bm.Config{}, fmt.Errorf("weights: %w", err)
	}
	return ParseConfig(data, path)
}

// SaveModel writes cfg as dir/config.json and the tensors of specs (bm variable paths) as the
// checkpoint dir/model.safetensors, whose metadata holds the config too.
func SaveModel(dir string, cfg bm.Config, specs []Spec, meta map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("weights: %w", err)
	}
	cj, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("weights: %w", err)
	}
	m := map[string]string{MetaConfig: string(cj), MetaFormat: FormatName}
	for k, v := range meta {
		m[k] = v
	}
	if err := SaveStream(filepath.Join(dir, CheckpointFile), specs, m); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, ConfigFile), append(cj, '\n'))
}

// WriteConfig writes cfg as dir/config.json (creating dir).
func WriteConfig(dir string, cfg bm.Config) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("weights: %w", err)
	}
	cj, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("weights: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, ConfigFile), append(cj, '\n'))
}

// writeFileAtomic writes data to path through a synced temporary file and a rename.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("weights: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("weights: writing %s: %w", path, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("weights: writing %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("weights: writing %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("weights: writing %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("weights: writing %s: %w", path, err)
	}
	return syncDir(dir)
}

// LoadModelDir reads a model directory: config.json (a bm.Config, or a released config.json)
// with either model.safetensors (a checkpoint written by SaveModel or "blackmamba import") or,
// failing that, the released pytorch_model.bin, imported on the fly. Float tensors are converted
// to opts.DType when it is set.
func LoadModelDir(dir string, opts ImportOptions) (bm.Config, map[string]*tensors.Tensor, error) {
	ckpt := filepath.Join(dir, CheckpointFile)
	if _, err := os.Stat(ckpt); err == nil {
		return LoadAny(ckpt, opts)
	}
	bin := filepath.Join(dir, ReleasedWeights)
	if _, err := os.Stat(bin); err == nil {
		return LoadAny(bin, opts)
	}
	return bm.Config{}, nil, fmt.Errorf("weights: model directory %s has neither %s nor %s", dir, CheckpointFile, ReleasedWeights)
}

// LoadAny reads a model from path, which is one of:
//   - a directory (see LoadModelDir);
//   - a safetensors checkpoint: the config comes from its metadata, or from config.json beside it;
//   - a torch.save archive of a released model (pytorch_model.bin): the config comes from the
//     config.json beside it, and the tensors are imported with ImportBlackMamba.
//
// The format is recognized by content, not by name. Float tensors are converted to opts.DType
// when it is set.
func LoadAny(path string, opts ImportOptions) (bm.Config, map[string]*tensors.Tensor, error) {
	info, err := os.Stat(path)
	if err != nil {
		return bm.Config{}, nil, fmt.Errorf("weights: %w", err)
	}
	if info.IsDir() {
		return LoadModelDir(path, opts)
	}
	isZip, err := hasZipMagic(path)
	if err != nil {
		return bm.Config{}, nil, err
	}
	besideConfig := filepath.Join(filepath.Dir(path), ConfigFile)
	if isZip {
		cfg, err := ReadConfig(besideConfig)
		if err != nil {
			return cfg, nil, fmt.Errorf("%w (the config of torch archive %s is read from the config.json beside it)", err, path)
		}
		a, err := ReadTorch(path)
		if err != nil {
			return cfg, nil, err
		}
		defer a.Close()
		ts, err := ImportBlackMamba(a, cfg, opts)
		return cfg, ts, err
	}
	f, err := Open(path)
	if err != nil {
		return bm.Config{}, nil, err
	}
	defer f.Close()
	var cfg bm.Config
	if cj, ok := f.meta[MetaConfig]; ok {
		cfg, err = ParseConfig([]byte(cj), path+" metadata \""+MetaConfig+"\"")
	} else {
		cfg, err = ReadConfig(besideConfig)
	}
	if err != nil {
		return cfg, nil, err
	}
	ts := make(map[string]*tensors.Tensor, len(f.names))
	for _, n := range f.names {
		t, err := f.Tensor(n)
		if err == nil && opts.DType != dtypes.InvalidDType && t.DType().IsFloat() && t.DType() != opts.DType {
			var c *tensors.Tensor
			c, err = convertTensor(t, opts.DType)
			t.FinalizeAll()
			t = c
		}
		if err != nil {
			for _, t := range ts {
				t.FinalizeAll()
			}
			return cfg, nil, fmt.Errorf("weights: %s: tensor %q: %w", path, n, err)
		}
		ts[n] = t
	}
	return cfg, ts, nil
}

// hasZipMagic reports whether the file starts like a zip archive ("PK\x03\x04").
func hasZipMagic(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("weights: %w", err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return false, nil
	}
	return strings.HasPrefix(string(b[:]), "PK\x03\x04"), nil
}
