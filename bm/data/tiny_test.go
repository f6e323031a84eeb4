package data

import (
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"blackmamba/bm/tokenizer"
)

// openTiny opens the tiny sample built by "blackmamba data build -tiny" (setup and CI run it), or
// skips the test when it has not been built.
func openTiny(t *testing.T) (*Corpus, *tokenizer.Tokenizer) {
	t.Helper()
	dataDir := tokenizer.DefaultDataDir()
	dir := filepath.Join(dataDir, "corpus-tiny")
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err != nil {
		t.Skipf("tiny corpus not built (%s missing): run `go run ./experiments/cmd/blackmamba data build -tiny`", dir)
	}
	tokPath := tokenizer.NeoXPath(dataDir)
	c, err := OpenFor(dir, tokPath)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	return c, tok
}

// TestTinyCorpusRoundTrip checks that the held-out shards of every domain hold exactly the
// tokenizer's encoding of their documents: decoding each EOS-terminated document and encoding it
// again gives the same ids.
func TestTinyCorpusRoundTrip(t *testing.T) {
	c, tok := openTiny(t)
	if got := len(c.Domains()); got != 5 {
		t.Errorf("tiny corpus has %d domains, want 5", got)
	}
	for _, d := range c.Manifest.Domains {
		ids := stream(t, c, d.Name, "heldout")
		docs, startTok := 0, 0
		for i, id := range ids {
			if id != EOS {
				continue
			}
			doc := make([]int, 0, i-startTok)
			for _, x := range ids[startTok:i] {
				doc = append(doc, int(x))
			}
			text := tok.Decode(doc)
			if !utf8.ValidString(text) || len(text) < minDocumentBytes {
				t.Errorf("%s: held-out document %d decodes to %d bytes (valid UTF-8 %v)", d.Name, docs, len(text), utf8.ValidString(text))
			}
			again := tok.Encode(text)
			if len(again) != len(doc) {
				t.Errorf("%s: document %d: re-encoding gives %d tokens, shard has %d", d.Name, docs, len(again), len(doc))
			} else {
				for j := range doc {
					if again[j] != doc[j] {
						t.Errorf("%s: document %d: token %d is %d, re-encoding gives %d", d.Name, docs, j, doc[j], again[j])
						break
					}
				}
			}
			docs++
			startTok = i + 1
		}
		if docs != d.HeldOut.Documents || startTok != len(ids) {
			t.Errorf("%s: %d EOS-terminated documents (stream of %d, last EOS at %d), manifest says %d", d.Name, docs, len(ids), startTok, d.HeldOut.Documents)
		}
	}
	// A training batch at the demo's shape.
	b, err := c.TrainLoader(128, 4, 0).Next()
	if err != nil || len(b) != 4*129 {
		t.Fatalf("train batch: %d tokens, %v", len(b), err)
	}
}
