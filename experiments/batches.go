package experiments

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"blackmamba/bm/data"
	"blackmamba/experiments/train"
)

// LoaderBatches makes a corpus loader a train.Batches: State is the JSON of the loader's
// data.LoaderState, and Restore decodes it and checks that it belongs to the same loader
// (corpus, kind, domain, sequence length and batch size).
type LoaderBatches struct {
	L *data.Loader
}

var _ train.Batches = LoaderBatches{}

// Batches wraps l.
func Batches(l *data.Loader) LoaderBatches { return LoaderBatches{L: l} }

// Next returns the next batch, flattened [B, T+1].
func (b LoaderBatches) Next() ([]int32, error) { return b.L.Next() }

// State returns the loader position as JSON.
func (b LoaderBatches) State() []byte {
	s, err := json.Marshal(b.L.State())
	if err != nil {
		// A LoaderState holds only numbers and strings; Marshal cannot fail on it.
		panic(fmt.Sprintf("experiments: encoding loader state: %v", err))
	}
	return s
}

// Restore sets the loader back to a position saved by State.
func (b LoaderBatches) Restore(state []byte) error {
	var s data.LoaderState
	if err := json.Unmarshal(state, &s); err != nil {
		return fmt.Errorf("experiments: loader state %.80q: %w", state, err)
	}
	return b.L.Restore(s)
}

// HeldOutBatches returns one held-out source per domain of c, each [batch, seqLen+1].
func HeldOutBatches(c *data.Corpus, seqLen, batch int) map[string]train.Batches {
	out := map[string]train.Batches{}
	for _, d := range c.Domains() {
		out[d] = Batches(c.HeldOut(d, seqLen, batch))
	}
	return out
}

// DefaultCorpusDir returns dataDir/corpus if it holds a manifest, else dataDir/corpus-tiny.
func DefaultCorpusDir(dataDir string) string {
	full := filepath.Join(dataDir, "corpus")
	if fileExists(filepath.Join(full, "manifest.json")) {
		return full
	}
	return filepath.Join(dataDir, "corpus-tiny")
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// SeqLen returns T of the loader's [B, T+1] batches.
func (b LoaderBatches) SeqLen() int { return b.L.SeqLen() }
