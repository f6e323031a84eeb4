package data

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// FormatVersion is the value of Manifest.Format written by this package.
const FormatVersion = "blackmamba-corpus/1"

// ManifestFile is the name of the manifest inside a corpus directory.
const ManifestFile = "manifest.json"

// EOS is the token id that separates documents in the token streams (GPT-NeoX "<|endoftext|>").
const EOS = 0

// Manifest describes a built corpus: where its tokens came from and how to verify them.
// It is written as indented JSON to manifest.json with no timestamps, so identical inputs give an
// identical file.
type Manifest struct {
	Format      string `json:"format"`      // FormatVersion
	DType       string `json:"dtype"`       // "uint16le": token ids, 2 bytes little-endian each
	Compression string `json:"compression"` // "gzip": each shard is one gzip stream
	EOS         int    `json:"eos"`         // separator appended after every document
	// ShardTokens is the number of tokens of every shard except the last of each split.
	ShardTokens int `json:"shard_tokens"`

	Tokenizer TokenizerInfo `json:"tokenizer"`

	Tiny            bool    `json:"tiny"`
	HeldOutFraction float64 `json:"heldout_fraction"`
	MaxBytes        int64   `json:"max_bytes,omitempty"`
	MaxTokens       int64   `json:"max_tokens,omitempty"`

	Domains []DomainInfo `json:"domains"`
	Sources []SourceInfo `json:"sources"`
}

// TokenizerInfo identifies the tokenizer the shards were encoded with.
type TokenizerInfo struct {
	File      string `json:"file"` // base name of the tokenizer file
	SHA256    string `json:"sha256"`
	VocabSize int    `json:"vocab_size"`
}

// DomainInfo is one domain of the mixture with its train and held-out splits.
type DomainInfo struct {
	Name    string    `json:"name"`
	Weight  float64   `json:"weight"` // default sampling weight for training windows
	Sources []string  `json:"sources"`
	Train   SplitInfo `json:"train"`
	HeldOut SplitInfo `json:"heldout"`
}

// SplitInfo is the token stream of one split of one domain, cut into shards.
type SplitInfo struct {
	Documents int         `json:"documents"`
	Bytes     int64       `json:"bytes"`  // UTF-8 bytes of clean text
	Tokens    int64       `json:"tokens"` // including one EOS per document
	Shards    []ShardInfo `json:"shards"`
}

// ShardInfo is one shard file, relative to the corpus directory.
type ShardInfo struct {
	File   string `json:"file"`
	Tokens int    `json:"tokens"`
	SHA256 string `json:"sha256"`
}

// SourceInfo records one input package: its version, licence and what was taken from it.
type SourceInfo struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"` // "npm", "deb" or "goroot"
	Package    string `json:"package"`
	Version    string `json:"version"`
	License    string `json:"license"`
	Domain     string `json:"domain"`
	Files      int    `json:"files"`      // input files read
	Documents  int    `json:"documents"`  // documents kept after cleaning and de-duplication
	Bytes      int64  `json:"bytes"`      // clean bytes kept
	Duplicates int    `json:"duplicates"` // exact duplicates removed
}

// Domain returns the domain with the given name, or nil.
func (m *Manifest) Domain(name string) *DomainInfo {
	for i := range m.Domains {
		if m.Domains[i].Name == name {
			return &m.Domains[i]
		}
	}
	return nil
}

// ReadManifest reads and validates dir/manifest.json without touching the shards.
func ReadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, ManifestFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("data: reading corpus manifest: %w", err)
	}
	m := &Manifest{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return nil, fmt.Errorf("data: %s: invalid manifest JSON: %w", path, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("data: %s: %w", path, err)
	}
	return m, nil
}

// validate checks the internal consistency of the manifest: format, non-empty domains, shard sizes
// adding up to the split totals.
func (m *Manifest) validate() error {
	if m.Format != FormatVersion {
		return fmt.Errorf("format %q, want %q", m.Format, FormatVersion)
	}
	if m.DType != "uint16le" || m.Compression != "gzip" {
		return fmt.Errorf("dtype %q / compression %q not supported (want uint16le / gzip)", m.DType, m.Compression)
	}
	if m.ShardTokens <= 0 {
		return fmt.Errorf("shard_tokens = %d, must be positive", m.ShardTokens)
	}
	if m.Tokenizer.SHA256 == "" || m.Tokenizer.VocabSize <= 0 || m.Tokenizer.VocabSize > 1<<16 {
		return fmt.Errorf("tokenizer entry incomplete or vocab_size %d does not fit uint16", m.Tokenizer.VocabSize)
	}
	if len(m.Domains) == 0 {
		return fmt.Errorf("no domains")
	}
	seen := map[string]bool{}
	for _, d := range m.Domains {
		if d.Name == "" || seen[d.Name] {
			return fmt.Errorf("domain name %q empty or repeated", d.Name)
		}
		seen[d.Name] = true
		if d.Weight < 0 {
			return fmt.Errorf("domain %q: negative weight %g", d.Name, d.Weight)
		}
		for _, sp := range []struct {
			name string
			s    SplitInfo
		}{{"train", d.Train}, {"heldout", d.HeldOut}} {
			if sp.s.Tokens == 0 || len(sp.s.Shards) == 0 {
				return fmt.Errorf("domain %q: %s split is empty", d.Name, sp.name)
			}
			var sum int64
			for i, sh := range sp.s.Shards {
				if sh.Tokens <= 0 || sh.Tokens > m.ShardTokens || (i < len(sp.s.Shards)-1 && sh.Tokens != m.ShardTokens) {
					return fmt.Errorf("domain %q: %s shard %s has %d tokens (shard_tokens %d)", d.Name, sp.name, sh.File, sh.Tokens, m.ShardTokens)
				}
				if strings.Contains(sh.File, "..") || filepath.IsAbs(sh.File) {
					return fmt.Errorf("domain %q: shard path %q leaves the corpus directory", d.Name, sh.File)
				}
				sum += int64(sh.Tokens)
			}
			if sum != sp.s.Tokens {
				return fmt.Errorf("domain %q: %s shards hold %d tokens, split says %d", d.Name, sp.name, sum, sp.s.Tokens)
			}
		}
	}
	return nil
}

// writeManifest writes m as indented JSON, atomically (temporary file then rename).
func writeManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return writeFileAtomic(filepath.Join(dir, ManifestFile), b)
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// encodeShard returns the gzip-compressed little-endian uint16 encoding of tokens. The gzip header
// carries no name and no modification time, so the bytes depend only on the tokens.
func encodeShard(tokens []uint16) ([]byte, error) {
	raw := make([]byte, 2*len(tokens))
	for i, t := range tokens {
		binary.LittleEndian.PutUint16(raw[2*i:], t)
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(raw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodeShard reads one shard file and checks that it holds exactly want tokens.
func decodeShard(path string, want int) ([]uint16, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: shard: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("data: shard %s: not a gzip stream: %w", path, err)
	}
	raw := make([]byte, 2*want+1)
	n, err := io.ReadFull(zr, raw)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("data: shard %s: %w", path, err)
	}
	if n != 2*want {
		return nil, fmt.Errorf("data: shard %s: holds %d bytes, manifest says %d tokens (%d bytes)", path, n, want, 2*want)
	}
	// Drain to the end so that the gzip checksum is verified.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, fmt.Errorf("data: shard %s: %w", path, err)
	}
	out := make([]uint16, want)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(raw[2*i:])
	}
	return out, nil
}

// fileSHA256 returns the hex sha256 of a file's contents.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func bytesSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
