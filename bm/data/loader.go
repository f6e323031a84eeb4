package data

import (
	"container/list"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// DefaultCacheShards is how many decompressed shards a Corpus keeps in memory (2 bytes per token;
// with the default shard size of 2^16 tokens that is 128 KiB per shard, 32 MiB in all).
const DefaultCacheShards = 256

// Corpus is an opened, verified corpus directory. Shards are decompressed on demand and kept in a
// small least-recently-used cache, so memory stays bounded however large the corpus is.
// A Corpus is safe for concurrent use by several loaders.
type Corpus struct {
	Dir      string
	Manifest *Manifest
	// ID is the sha256 of manifest.json; loader states record it to refuse resuming on another corpus.
	ID string

	mu    sync.Mutex
	cache map[shardKey]*list.Element
	lru   *list.List // of *cachedShard, most recent at the front
	max   int
}

type shardKey struct {
	domain, split string
	index         int
}

type cachedShard struct {
	key    shardKey
	tokens []uint16
}

// Open reads dir/manifest.json, validates it and verifies the sha256 of every shard file.
// Any missing or altered shard is an error naming the file.
func Open(dir string) (*Corpus, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	id, err := fileSHA256(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	for _, d := range m.Domains {
		for _, s := range []SplitInfo{d.Train, d.HeldOut} {
			for _, sh := range s.Shards {
				path := filepath.Join(dir, sh.File)
				got, err := fileSHA256(path)
				if err != nil {
					return nil, fmt.Errorf("data: domain %q: shard listed in the manifest: %w", d.Name, err)
				}
				if got != sh.SHA256 {
					return nil, fmt.Errorf("data: shard %s: sha256 %s does not match the manifest (%s): the file is corrupted or from another build", path, got, sh.SHA256)
				}
			}
		}
	}
	return &Corpus{Dir: dir, Manifest: m, ID: id, cache: map[shardKey]*list.Element{}, lru: list.New(), max: DefaultCacheShards}, nil
}

// OpenFor opens the corpus and checks that it was tokenized by the tokenizer file at tokenizerPath.
func OpenFor(dir, tokenizerPath string) (*Corpus, error) {
	c, err := Open(dir)
	if err != nil {
		return nil, err
	}
	if err := c.VerifyTokenizer(tokenizerPath); err != nil {
		return nil, err
	}
	return c, nil
}

// VerifyTokenizer returns an error unless the file at path has the sha256 recorded in the manifest.
func (c *Corpus) VerifyTokenizer(path string) error {
	got, err := fileSHA256(path)
	if err != nil {
		return fmt.Errorf("data: tokenizer file: %w", err)
	}
	if got != c.Manifest.Tokenizer.SHA256 {
		return fmt.Errorf("data: corpus %s was tokenized with %s (sha256 %s) but tokenizer %s has sha256 %s",
			filepath.Join(c.Dir, ManifestFile), c.Manifest.Tokenizer.File, c.Manifest.Tokenizer.SHA256, path, got)
	}
	return nil
}

// SetCacheShards changes how many decompressed shards are kept in memory (at least 1).
func (c *Corpus) SetCacheShards(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max = max(n, 1)
	c.evict()
}

// Domains returns the domain names in manifest order.
func (c *Corpus) Domains() []string {
	out := make([]string, len(c.Manifest.Domains))
	for i, d := range c.Manifest.Domains {
		out[i] = d.Name
	}
	return out
}

// Weights returns the manifest's default mixture weights, by domain.
func (c *Corpus) Weights() map[string]float64 {
	out := map[string]float64{}
	for _, d := range c.Manifest.Domains {
		out[d.Name] = d.Weight
	}
	return out
}

func (c *Corpus) split(domain, split string) (*SplitInfo, error) {
	d := c.Manifest.Domain(domain)
	if d == nil {
		return nil, fmt.Errorf("data: corpus %s has no domain %q (have %v)", c.Dir, domain, c.Domains())
	}
	if split == "train" {
		return &d.Train, nil
	}
	return &d.HeldOut, nil
}

// shard returns the decompressed tokens of one shard, through the LRU cache.
func (c *Corpus) shard(domain, split string, index int) ([]uint16, error) {
	key := shardKey{domain, split, index}
	c.mu.Lock()
	if e, ok := c.cache[key]; ok {
		c.lru.MoveToFront(e)
		t := e.Value.(*cachedShard).tokens
		c.mu.Unlock()
		return t, nil
	}
	c.mu.Unlock()
	s, err := c.split(domain, split)
	if err != nil {
		return nil, err
	}
	sh := s.Shards[index]
	tokens, err := decodeShard(filepath.Join(c.Dir, sh.File), sh.Tokens)
	if err != nil {
		return nil, err
	}
	vocab := c.Manifest.Tokenizer.VocabSize
	for i, t := range tokens {
		if int(t) >= vocab {
			return nil, fmt.Errorf("data: shard %s: token %d at index %d is outside the vocabulary (size %d)", filepath.Join(c.Dir, sh.File), t, i, vocab)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache[key]; ok { // loaded concurrently
		return e.Value.(*cachedShard).tokens, nil
	}
	c.cache[key] = c.lru.PushFront(&cachedShard{key, tokens})
	c.evict()
	return tokens, nil
}

func (c *Corpus) evict() {
	for c.lru.Len() > c.max {
		e := c.lru.Back()
		delete(c.cache, e.Value.(*cachedShard).key)
		c.lru.Remove(e)
	}
}

// readWindow copies len(dst) tokens of a split starting at pos into dst. With wrap, positions past
// the end continue from the start of the split (the stream ends with EOS, so this joins the last
// and first documents like any other pair).
func (c *Corpus) readWindow(domain, split string, pos int64, dst []int32, wrap bool) error {
	s, err := c.split(domain, split)
	if err != nil {
		return err
	}
	st := int64(c.Manifest.ShardTokens)
	for i := 0; i < len(dst); {
		if pos >= s.Tokens {
			if !wrap {
				return fmt.Errorf("data: domain %q %s: position %d past the end (%d tokens)", domain, split, pos, s.Tokens)
			}
			pos = 0
		}
		idx := int(pos / st)
		tokens, err := c.shard(domain, split, idx)
		if err != nil {
			return err
		}
		off := int(pos - int64(idx)*st)
		n := copy32(dst[i:], tokens[off:])
		i += n
		pos += int64(n)
	}
	return nil
}

func copy32(dst []int32, src []uint16) int {
	n := min(len(dst), len(src))
	for i := 0; i < n; i++ {
		dst[i] = int32(src[i])
	}
	return n
}

// LoaderState is everything needed to resume a Loader at the exact same point of its data order.
// It is plain data, meant to be stored as JSON next to a training checkpoint.
type LoaderState struct {
	CorpusID string `json:"corpus_id"` // sha256 of the corpus manifest
	Kind     string `json:"kind"`      // "train" or "heldout"
	Domain   string `json:"domain,omitempty"`
	Seed     int64  `json:"seed"`
	SeqLen   int    `json:"seq_len"`
	Batch    int    `json:"batch"`
	// Weights are the mixture weights of a training loader, in manifest domain order.
	Weights []float64 `json:"weights,omitempty"`
	// Window is the number of windows handed out so far.
	Window int64 `json:"window"`
}

// Loader yields batches of token windows of length SeqLen+1.
//
// A training loader (Corpus.TrainLoader) draws windows at random: window k is a pure function of
// (seed, k): its domain is drawn with probability proportional to the mixture weights and its start
// uniformly over the domain's training stream (which wraps around), so State/Restore resume exactly.
// It never ends.
//
// A held-out loader (Corpus.HeldOut) walks one domain's held-out stream from the start with stride
// SeqLen: window i holds tokens [i·SeqLen, i·SeqLen+SeqLen], so every token after the first is a
// prediction target exactly once. It returns io.EOF after the last full window; the last batch may
// have fewer rows.
type Loader struct {
	c       *Corpus
	st      LoaderState
	cum     []float64 // cumulative normalized weights (train)
	windows int64     // number of windows (held-out)
	err     error     // construction error, returned by Next
}

// TrainLoader returns a training loader with the manifest's mixture weights. Invalid arguments are
// reported by the first Next.
func (c *Corpus) TrainLoader(seqLen, batch int, seed int64) *Loader {
	l, err := c.TrainLoaderWeights(seqLen, batch, seed, nil)
	if err != nil {
		return &Loader{c: c, err: err}
	}
	return l
}

// TrainLoaderWeights is TrainLoader with explicit mixture weights by domain name (nil: the
// manifest's). Domains missing from weights get weight 0; unknown names are an error.
func (c *Corpus) TrainLoaderWeights(seqLen, batch int, seed int64, weights map[string]float64) (*Loader, error) {
	if seqLen <= 0 || batch <= 0 {
		return nil, fmt.Errorf("data: train loader: seqLen %d and batch %d must be positive", seqLen, batch)
	}
	if weights == nil {
		weights = c.Weights()
	}
	for name := range weights {
		if c.Manifest.Domain(name) == nil {
			return nil, fmt.Errorf("data: mixture weight for unknown domain %q (corpus has %v)", name, c.Domains())
		}
	}
	w := make([]float64, len(c.Manifest.Domains))
	for i, d := range c.Manifest.Domains {
		w[i] = weights[d.Name]
	}
	l := &Loader{c: c, st: LoaderState{CorpusID: c.ID, Kind: "train", Seed: seed, SeqLen: seqLen, Batch: batch, Weights: w}}
	if err := l.setWeights(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Loader) setWeights() error {
	var sum float64
	for i, w := range l.st.Weights {
		if w < 0 || math.IsNaN(w) || math.IsInf(w, 0) {
			return fmt.Errorf("data: mixture weight %g for domain %q is not a finite non-negative number", w, l.c.Manifest.Domains[i].Name)
		}
		sum += w
	}
	if sum <= 0 {
		return fmt.Errorf("data: mixture weights %v sum to zero", l.st.Weights)
	}
	l.cum = make([]float64, len(l.st.Weights))
	var acc float64
	for i, w := range l.st.Weights {
		acc += w / sum
		l.cum[i] = acc
	}
	return nil
}

// HeldOut returns the deterministic sequential loader over one domain's held-out split.
// An unknown domain or a split shorter than seqLen+1 tokens is reported by the first Next.
func (c *Corpus) HeldOut(domain string, seqLen, batch int) *Loader {
	l := &Loader{c: c, st: LoaderState{CorpusID: c.ID, Kind: "heldout", Domain: domain, SeqLen: seqLen, Batch: batch}}
	d := c.Manifest.Domain(domain)
	switch {
	case d == nil:
		l.err = fmt.Errorf("data: corpus %s has no domain %q (have %v)", c.Dir, domain, c.Domains())
	case seqLen <= 0 || batch <= 0:
		l.err = fmt.Errorf("data: held-out loader: seqLen %d and batch %d must be positive", seqLen, batch)
	case d.HeldOut.Tokens < int64(seqLen)+1:
		l.err = fmt.Errorf("data: held-out split of domain %q in %s has %d tokens, fewer than seqLen+1 = %d",
			domain, c.Dir, d.HeldOut.Tokens, seqLen+1)
	default:
		l.windows = (d.HeldOut.Tokens - 1) / int64(seqLen)
	}
	return l
}

// Windows returns the number of windows of a held-out loader (0 for a training loader).
func (l *Loader) Windows() int64 { return l.windows }

// SeqLen returns T; every window has T+1 tokens.
func (l *Loader) SeqLen() int { return l.st.SeqLen }

// BatchSize returns the number of windows per batch.
func (l *Loader) BatchSize() int { return l.st.Batch }

// Next returns the next batch as a row-major [rows, SeqLen+1] slice, rows = BatchSize() except for
// the last batch of a held-out loader. It returns io.EOF at the end of a held-out split.
func (l *Loader) Next() ([]int32, error) {
	if l.err != nil {
		return nil, l.err
	}
	T1 := l.st.SeqLen + 1
	rows := l.st.Batch
	if l.st.Kind == "heldout" {
		left := l.windows - l.st.Window
		if left <= 0 {
			return nil, io.EOF
		}
		rows = int(min(int64(rows), left))
	}
	out := make([]int32, rows*T1)
	// Rows are read concurrently: each may need a shard decompressed.
	errs := make([]error, rows)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(rows, runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			for {
				r := int(next.Add(1) - 1)
				if r >= rows {
					return
				}
				k := l.st.Window + int64(r)
				if l.st.Kind == "heldout" {
					errs[r] = l.c.readWindow(l.st.Domain, "heldout", k*int64(l.st.SeqLen), out[r*T1:(r+1)*T1], false)
				} else {
					domain, pos := l.trainWindow(k)
					errs[r] = l.c.readWindow(domain, "train", pos, out[r*T1:(r+1)*T1], true)
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	l.st.Window += int64(rows)
	return out, nil
}

// trainWindow returns the domain and start position of training window k.
func (l *Loader) trainWindow(k int64) (string, int64) {
	h := splitmix64(uint64(l.st.Seed) ^ splitmix64(uint64(k)+0x632be59bd9b4e019))
	u := float64(h>>11) / (1 << 53)
	di := len(l.cum) - 1
	for i, c := range l.cum {
		if u < c && l.st.Weights[i] > 0 {
			di = i
			break
		}
	}
	for l.st.Weights[di] == 0 { // rounding at the top end: take the last domain with weight
		di--
	}
	d := &l.c.Manifest.Domains[di]
	pos := int64(splitmix64(h) % uint64(d.Train.Tokens))
	return d.Name, pos
}

// splitmix64 is a fixed 64-bit mixing function (Steele, Lea and Flood's SplitMix64 finalizer), used
// instead of math/rand so that the data order is stable across Go versions.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// State returns the loader's position; Restore of it on a loader made with the same arguments on the
// same corpus continues with exactly the same batches.
func (l *Loader) State() LoaderState {
	s := l.st
	s.Weights = append([]float64(nil), l.st.Weights...)
	return s
}

// Restore sets the loader to a saved state. The state must come from a loader of the same kind,
// domain, sequence length, batch size and corpus; a training state also brings back its seed and
// mixture weights.
func (l *Loader) Restore(s LoaderState) error {
	if l.err != nil {
		return l.err
	}
	switch {
	case s.CorpusID != l.st.CorpusID:
		return fmt.Errorf("data: loader state is for corpus %s, this corpus (%s) is %s", s.CorpusID, l.c.Dir, l.st.CorpusID)
	case s.Kind != l.st.Kind || s.Domain != l.st.Domain:
		return fmt.Errorf("data: loader state is for a %s loader %q, this is a %s loader %q", s.Kind, s.Domain, l.st.Kind, l.st.Domain)
	case s.SeqLen != l.st.SeqLen || s.Batch != l.st.Batch:
		return fmt.Errorf("data: loader state has seqLen %d batch %d, this loader %d and %d", s.SeqLen, s.Batch, l.st.SeqLen, l.st.Batch)
	case s.Window < 0:
		return fmt.Errorf("data: loader state has negative window %d", s.Window)
	}
	if s.Kind == "train" {
		if len(s.Weights) != len(l.c.Manifest.Domains) {
			return fmt.Errorf("data: loader state has %d mixture weights, corpus has %d domains", len(s.Weights), len(l.c.Manifest.Domains))
		}
		old := l.st
		l.st = s
		l.st.Weights = append([]float64(nil), s.Weights...)
		if err := l.setWeights(); err != nil {
			l.st = old
			return err
		}
		return nil
	}
	l.st.Window = s.Window
	return nil
}

// Reset goes back to the first window (same seed).
func (l *Loader) Reset() { l.st.Window = 0 }

// Dataset adapts the loader to GoMLX's train.Dataset. Each Yield returns
// inputs = [tokens [rows, T+1] int32] and labels = [targets [rows, T] int32] (tokens shifted by one).
// A held-out dataset returns io.EOF at its end; Reset starts it again.
func (l *Loader) Dataset(name string) *Dataset { return &Dataset{name: name, l: l} }

// Dataset implements GoMLX's train.Dataset on top of a Loader.
type Dataset struct {
	name string
	l    *Loader
}

// Name implements train.Dataset.
func (d *Dataset) Name() string { return d.name }

// Reset implements train.Dataset.
func (d *Dataset) Reset() { d.l.Reset() }

// Loader returns the underlying loader (for State/Restore).
func (d *Dataset) Loader() *Loader { return d.l }

// Yield implements train.Dataset; spec is nil.
func (d *Dataset) Yield() (spec any, inputs, labels []*tensors.Tensor, err error) {
	b, err := d.l.Next()
	if err != nil {
		return nil, nil, nil, err
	}
	T1 := d.l.st.SeqLen + 1
	rows := len(b) / T1
	tgt := make([]int32, 0, rows*(T1-1))
	for r := 0; r < rows; r++ {
		tgt = append(tgt, b[r*T1+1:(r+1)*T1]...)
	}
	return nil, []*tensors.Tensor{tensors.FromFlatDataAndDimensions(b, rows, T1)},
		[]*tensors.Tensor{tensors.FromFlatDataAndDimensions(tgt, rows, T1-1)}, nil
}
