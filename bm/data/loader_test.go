package data

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"blackmamba/bm/tokenizer"
)

// byteEncoder is a stand-in tokenizer for tests: byte b becomes id b+1 (0 stays EOS).
type byteEncoder struct{}

func (byteEncoder) Encode(s string) []int {
	out := make([]int, len(s))
	for i := 0; i < len(s); i++ {
		out[i] = int(s[i]) + 1
	}
	return out
}
func (byteEncoder) VocabSize() int { return 257 }

// synthetic builds a small corpus of three domains with the byte encoder and returns its directory
// and the tokenizer file it claims.
func synthetic(t testing.TB, opts BuildOptions) (string, string) {
	t.Helper()
	dir := t.TempDir()
	tokPath := filepath.Join(dir, "fake_tokenizer.json")
	if err := os.WriteFile(tokPath, []byte(`{"fake": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	sources := []Source{{Name: "a", Domain: DomainBooks}, {Name: "b", Domain: DomainCode}, {Name: "c", Domain: DomainMail}}
	var docs []document
	sizes := []int{300, 120, 80}
	for si := range sources {
		for j := 0; j < 20; j++ {
			text := strings.Repeat(fmt.Sprintf("%s%d.", sources[si].Name, j), sizes[si]/5+j)
			h := sha256.Sum256([]byte(text))
			docs = append(docs, document{source: si, text: text, key: string(h[:])})
		}
	}
	infos := make([]SourceInfo, len(sources))
	for i, s := range sources {
		infos[i] = SourceInfo{Name: s.Name, Kind: "test", Package: s.Name, Version: "1", License: "CC0", Domain: s.Domain}
	}
	opts.OutDir = filepath.Join(dir, "corpus")
	if opts.ShardTokens == 0 {
		opts.ShardTokens = 500
	}
	if opts.HeldOutFraction == 0 {
		opts.HeldOutFraction = 0.2
	}
	if opts.Weights == nil {
		opts.Weights = map[string]float64{DomainBooks: 0.5, DomainCode: 0.3, DomainMail: 0.2}
	}
	if _, err := writeCorpus(docs, sources, infos, byteEncoder{}, tokPath, opts, func(string, ...any) {}); err != nil {
		t.Fatal(err)
	}
	return opts.OutDir, tokPath
}

// stream returns the full token stream of one split, read shard by shard.
func stream(t testing.TB, c *Corpus, domain, split string) []int32 {
	t.Helper()
	s, err := c.split(domain, split)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int32, s.Tokens)
	if err := c.readWindow(domain, split, 0, out, false); err != nil {
		t.Fatal(err)
	}
	return out
}

func decodeBytes(ids []int32) string {
	b := make([]byte, 0, len(ids))
	for _, id := range ids {
		if id == EOS {
			b = append(b, '|')
		} else {
			b = append(b, byte(id-1))
		}
	}
	return string(b)
}

func TestBuildDeterministicAndConsistent(t *testing.T) {
	dir1, _ := synthetic(t, BuildOptions{})
	dir2, _ := synthetic(t, BuildOptions{})
	files := 0
	err := filepath.Walk(dir1, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir1, p)
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(dir2, rel))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two identical builds (%v)", rel, err)
		}
		files++
		return nil
	})
	if err != nil || files < 8 {
		t.Fatalf("walk: %v, %d files", err, files)
	}
	c, err := Open(dir1)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Domains(), ","); got != "books,mail,code" {
		t.Errorf("domains %s, want books,mail,code (fixed order)", got)
	}
	for _, d := range c.Manifest.Domains {
		train, held := decodeBytes(stream(t, c, d.Name, "train")), decodeBytes(stream(t, c, d.Name, "heldout"))
		// Every document ends with EOS, documents appear once, and no document is in both splits.
		for _, sp := range []struct {
			s    string
			info SplitInfo
		}{{train, d.Train}, {held, d.HeldOut}} {
			if !strings.HasSuffix(sp.s, "|") || strings.Count(sp.s, "|") != sp.info.Documents {
				t.Errorf("%s: %d separators for %d documents", d.Name, strings.Count(sp.s, "|"), sp.info.Documents)
			}
			if int64(len(sp.s)-sp.info.Documents) != sp.info.Bytes {
				t.Errorf("%s: %d text bytes in stream, manifest says %d", d.Name, len(sp.s)-sp.info.Documents, sp.info.Bytes)
			}
		}
		for _, doc := range strings.Split(strings.TrimSuffix(held, "|"), "|") {
			if strings.Contains(train, "|"+doc+"|") || strings.HasPrefix(train, doc+"|") {
				t.Errorf("%s: held-out document %.20q also in train", d.Name, doc)
			}
		}
		if d.Train.Documents+d.HeldOut.Documents != 20 {
			t.Errorf("%s: %d + %d documents, want 20", d.Name, d.Train.Documents, d.HeldOut.Documents)
		}
		frac := float64(d.HeldOut.Bytes) / float64(d.HeldOut.Bytes+d.Train.Bytes)
		if frac < 0.2 || frac > 0.35 {
			t.Errorf("%s: held-out fraction %.3f, want 0.2 up to one document more", d.Name, frac)
		}
	}
}

func TestBuildBudgets(t *testing.T) {
	// Byte budget 6000 shared 0.5/0.3/0.2: books 3000, code 1800, mail 1200 (all have more).
	dir, _ := synthetic(t, BuildOptions{MaxBytes: 6000})
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{DomainBooks: 3000, DomainCode: 1800, DomainMail: 1200}
	for _, d := range c.Manifest.Domains {
		got := float64(d.Train.Bytes + d.HeldOut.Bytes)
		if got > want[d.Name] || got < want[d.Name]-400 { // at most one document (< 400 bytes) short
			t.Errorf("%s: %v bytes, want within one document below %v", d.Name, got, want[d.Name])
		}
	}
	// Token budget on the training split only.
	dir, _ = synthetic(t, BuildOptions{MaxTokens: 3000})
	if c, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, d := range c.Manifest.Domains {
		total += d.Train.Tokens
	}
	if total > 3000 || total < 2000 {
		t.Errorf("train tokens %d with -max-tokens 3000", total)
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	tokPath := filepath.Join(dir, "tok.json")
	os.WriteFile(tokPath, []byte("x"), 0o644)
	sources := []Source{{Name: "a", Domain: DomainBooks}, {Name: "empty", Domain: DomainMail}}
	docs := []document{{source: 0, text: "one", key: "1"}, {source: 0, text: "two", key: "2"}}
	_, err := writeCorpus(docs, sources, make([]SourceInfo, 2), byteEncoder{}, tokPath, BuildOptions{OutDir: dir}, func(string, ...any) {})
	if err == nil || !strings.Contains(err.Error(), `domain "mail" has 0 documents from sources [empty]`) {
		t.Errorf("empty domain: got %v", err)
	}
	_, err = Build(BuildOptions{DataDir: dir, TokenizerPath: filepath.Join(dir, "missing.json")})
	if err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("missing tokenizer: got %v", err)
	}
	_, err = Build(BuildOptions{DataDir: dir, TokenizerPath: tokPath})
	if err == nil || !strings.Contains(err.Error(), "tok.json") {
		t.Errorf("corrupted tokenizer: got %v", err)
	}
}

func TestTrainLoader(t *testing.T) {
	dir, _ := synthetic(t, BuildOptions{})
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c.SetCacheShards(2)
	streams := map[string]string{}
	for _, d := range c.Domains() {
		streams[d] = decodeBytes(stream(t, c, d, "train"))
	}
	const T, B = 64, 4
	l := c.TrainLoader(T, B, 7)
	counts := map[string]int{}
	n := 0
	for step := 0; step < 500; step++ {
		b, err := l.Next()
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != B*(T+1) {
			t.Fatalf("batch of %d tokens, want %d", len(b), B*(T+1))
		}
		for r := 0; r < B; r++ {
			// Each window is a slice of one domain's training stream, wrapping around at its end.
			w := decodeBytes(b[r*(T+1) : (r+1)*(T+1)])
			found := ""
			for d, s := range streams {
				if strings.Contains(s+s, w) {
					found = d
				}
			}
			if found == "" {
				t.Fatalf("window %q is in no training stream", w)
			}
			counts[found]++
			n++
		}
	}
	c.mu.Lock()
	if c.lru.Len() > 2 {
		t.Errorf("cache holds %d shards, limit 2", c.lru.Len())
	}
	c.mu.Unlock()
	// Domain frequencies follow the weights within 4 standard deviations.
	for d, w := range map[string]float64{DomainBooks: 0.5, DomainCode: 0.3, DomainMail: 0.2} {
		p := float64(counts[d]) / float64(n)
		if sd := math.Sqrt(w * (1 - w) / float64(n)); math.Abs(p-w) > 4*sd {
			t.Errorf("domain %s drawn %.3f of the time, weight %.2f (4σ = %.3f)", d, p, w, 4*sd)
		}
	}
}

func TestLoaderStateRestore(t *testing.T) {
	dir, _ := synthetic(t, BuildOptions{})
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	l := c.TrainLoader(32, 3, 11)
	for i := 0; i < 5; i++ {
		l.Next()
	}
	st := l.State()
	var want [][]int32
	for i := 0; i < 3; i++ {
		b, _ := l.Next()
		want = append(want, b)
	}
	js, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var st2 LoaderState
	json.Unmarshal(js, &st2)
	c2, err := Open(dir) // a fresh process would reopen the corpus
	if err != nil {
		t.Fatal(err)
	}
	l2 := c2.TrainLoader(32, 3, 999) // different seed: Restore brings back the saved one
	if err := l2.Restore(st2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		b, _ := l2.Next()
		if fmt.Sprint(b) != fmt.Sprint(want[i]) {
			t.Fatalf("batch %d after restore differs", i)
		}
	}
	// A different seed gives a different order.
	b0, _ := c.TrainLoader(32, 3, 11).Next()
	b1, _ := c.TrainLoader(32, 3, 12).Next()
	if fmt.Sprint(b0) == fmt.Sprint(b1) {
		t.Error("seeds 11 and 12 give the same first batch")
	}
	// Mismatched states are refused.
	for name, mod := range map[string]func(*LoaderState){
		"seqlen": func(s *LoaderState) { s.SeqLen = 16 },
		"kind":   func(s *LoaderState) { s.Kind = "heldout"; s.Domain = "books" },
		"corpus": func(s *LoaderState) { s.CorpusID = "abc" },
		"weight": func(s *LoaderState) { s.Weights = s.Weights[:1] },
	} {
		s := st
		s.Weights = append([]float64(nil), st.Weights...)
		mod(&s)
		if err := c.TrainLoader(32, 3, 11).Restore(s); err == nil {
			t.Errorf("%s: mismatched state accepted", name)
		}
	}
}

func TestHeldOutLoader(t *testing.T) {
	dir, _ := synthetic(t, BuildOptions{})
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	const T, B = 50, 4
	for _, d := range c.Domains() {
		full := stream(t, c, d, "heldout")
		l := c.HeldOut(d, T, B)
		wantWindows := (int64(len(full)) - 1) / T
		if l.Windows() != wantWindows {
			t.Fatalf("%s: %d windows, want %d", d, l.Windows(), wantWindows)
		}
		var got []int32
		batches := 0
		for {
			b, err := l.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			batches++
			for r := 0; r < len(b)/(T+1); r++ {
				row := b[r*(T+1) : (r+1)*(T+1)]
				if len(got) > 0 {
					if row[0] != got[len(got)-1] {
						t.Fatalf("%s: window does not start at the previous window's last token", d)
					}
					row = row[1:]
				}
				got = append(got, row...)
			}
		}
		if int64(len(got)) != wantWindows*T+1 || fmt.Sprint(got) != fmt.Sprint(full[:len(got)]) {
			t.Fatalf("%s: windows do not tile the held-out stream", d)
		}
		if want := int((wantWindows + B - 1) / B); batches != want {
			t.Errorf("%s: %d batches, want %d", d, batches, want)
		}
		l.Reset()
		if b, err := l.Next(); err != nil || fmt.Sprint(b[:T+1]) != fmt.Sprint(full[:T+1]) {
			t.Errorf("%s: Reset does not restart at the first window (%v)", d, err)
		}
	}
	if _, err := c.HeldOut("books", 100000, 1).Next(); err == nil || !strings.Contains(err.Error(), "fewer than seqLen+1") {
		t.Errorf("too-short held-out split: got %v", err)
	}
	if _, err := c.HeldOut("nope", 10, 1).Next(); err == nil || !strings.Contains(err.Error(), `no domain "nope"`) {
		t.Errorf("unknown domain: got %v", err)
	}
}

func TestDatasetYield(t *testing.T) {
	dir, _ := synthetic(t, BuildOptions{})
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ds := c.TrainLoader(16, 2, 1).Dataset("train")
	_, in, lab, err := ds.Yield()
	if err != nil {
		t.Fatal(err)
	}
	x := in[0].Value().([][]int32)
	y := lab[0].Value().([][]int32)
	if len(x) != 2 || len(x[0]) != 17 || len(y) != 2 || len(y[0]) != 16 {
		t.Fatalf("shapes %s and %s, want [2 17] and [2 16]", in[0].Shape(), lab[0].Shape())
	}
	for r := range y {
		if fmt.Sprint(y[r]) != fmt.Sprint(x[r][1:]) {
			t.Errorf("row %d: labels are not the inputs shifted by one", r)
		}
	}
	ho := c.HeldOut("mail", 16, 1000).Dataset("mail")
	if _, _, _, err := ho.Yield(); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := ho.Yield(); !errors.Is(err, io.EOF) {
		t.Errorf("second Yield of a one-batch held-out set: %v, want io.EOF", err)
	}
}

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(t *testing.T, dir string, m *Manifest)
		want    string
	}{
		{"flipped byte", func(t *testing.T, dir string, m *Manifest) {
			p := filepath.Join(dir, m.Domains[0].Train.Shards[0].File)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 1
			os.WriteFile(p, b, 0o644)
		}, "books/train-00000.u16.gz: sha256"},
		{"missing shard", func(t *testing.T, dir string, m *Manifest) {
			os.Remove(filepath.Join(dir, m.Domains[1].HeldOut.Shards[0].File))
		}, "mail/heldout-00000.u16.gz: no such file"},
		{"empty domain", func(t *testing.T, dir string, m *Manifest) {
			m.Domains[2].HeldOut = SplitInfo{}
			writeManifest(dir, m)
		}, `domain "code": heldout split is empty`},
		{"no manifest", func(t *testing.T, dir string, m *Manifest) {
			os.Remove(filepath.Join(dir, ManifestFile))
		}, "manifest.json: no such file"},
		{"bad json", func(t *testing.T, dir string, m *Manifest) {
			os.WriteFile(filepath.Join(dir, ManifestFile), []byte(`{"format": 3}`), 0o644)
		}, "manifest.json: invalid manifest JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := synthetic(t, BuildOptions{})
			m, err := ReadManifest(dir)
			if err != nil {
				t.Fatal(err)
			}
			tc.corrupt(t, dir, m)
			_, err = Open(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestShardContentErrors(t *testing.T) {
	// A shard whose checksum matches the manifest but whose content disagrees with it (written by a
	// faulty tool): the loader reports the file when it decompresses it.
	dir, tokPath := synthetic(t, BuildOptions{})
	m, _ := ReadManifest(dir)
	sh := &m.Domains[0].HeldOut.Shards[0]
	b, _ := encodeShard(make([]uint16, sh.Tokens-1))
	os.WriteFile(filepath.Join(dir, sh.File), b, 0o644)
	sh.SHA256 = bytesSHA256(b)
	writeManifest(dir, m)
	c, err := OpenFor(dir, tokPath)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.HeldOut("books", 8, 1).Next()
	if err == nil || !strings.Contains(err.Error(), "books/heldout-00000.u16.gz: holds") {
		t.Errorf("short shard: got %v", err)
	}
	// A manifest made with another tokenizer.
	other := filepath.Join(t.TempDir(), "other.json")
	os.WriteFile(other, []byte(`{"other": true}`), 0o644)
	if _, err := OpenFor(dir, other); err == nil || !strings.Contains(err.Error(), "other.json has sha256") {
		t.Errorf("tokenizer mismatch: got %v", err)
	}
	if _, err := OpenFor(dir, other+".missing"); err == nil || !strings.Contains(err.Error(), "other.json.missing") {
		t.Errorf("missing tokenizer: got %v", err)
	}
	// Token ids beyond the vocabulary.
	m.Tokenizer.VocabSize = 10
	writeManifest(dir, m)
	c, _ = Open(dir)
	if _, err := c.TrainLoader(8, 1, 0).Next(); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
		t.Errorf("out-of-vocabulary token: got %v", err)
	}
}

// BenchmarkTrainLoader measures random training batches of [8, 513] tokens from a synthetic corpus
// whose shards do not all fit in the cache.
func BenchmarkTrainLoader(b *testing.B) {
	dir, _ := synthetic(b, BuildOptions{ShardTokens: 1000})
	c, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	c.SetCacheShards(4)
	l := c.TrainLoader(512, 8, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.Next(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*8*513)/b.Elapsed().Seconds()/1e6, "Mtokens/s")
}

// BenchmarkDefaultCorpusLoader measures random training batches of [8, 2049] tokens from the
// default corpus (skipped when it has not been built), with the default cache.
func BenchmarkDefaultCorpusLoader(b *testing.B) {
	dir := filepath.Join(tokenizer.DefaultDataDir(), "corpus")
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err != nil {
		b.Skipf("default corpus not built (%s missing)", dir)
	}
	c, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	l := c.TrainLoader(2048, 8, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.Next(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*8*2049)/b.Elapsed().Seconds()/1e6, "Mtokens/s")
}
