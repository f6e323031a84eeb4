package tokenizer

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// benchDocs returns a mixed text cut into documents of about 4 KB: the Go language specification
// (English prose in HTML) and net/http's server.go (code) from the Go installation, plus the golden
// documents (many scripts, whitespace runs, emoji).
func benchDocs(b *testing.B) (docs []string, total int64) {
	var text []byte
	for _, p := range []string{"doc/go_spec.html", "src/net/http/server.go"} {
		if data, err := os.ReadFile(filepath.Join(runtime.GOROOT(), p)); err == nil {
			text = append(text, data...)
		}
	}
	for _, d := range loadGolden(b) {
		text = append(text, d.input...)
	}
	const size = 4096
	for len(text) > 0 {
		n := min(size, len(text))
		docs = append(docs, string(text[:n]))
		total += int64(n)
		text = text[n:]
	}
	return docs, total
}

// BenchmarkEncode encodes the mixed text on one goroutine, with the BPE cache warm ("cached", the
// steady state of a long run) and disabled ("uncached", every piece merged from bytes).
func BenchmarkEncode(b *testing.B) {
	tok := neoxTokenizer(b)
	docs, total := benchDocs(b)
	uncached := *tok
	model := *tok.bpe
	model.cache = nil
	uncached.bpe = &model
	for _, bc := range []struct {
		name string
		tok  *Tokenizer
	}{{"cached", tok}, {"uncached", &uncached}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(total)
			tokens := 0
			for b.Loop() {
				tokens = 0
				for _, d := range docs {
					tokens += len(bc.tok.Encode(d))
				}
			}
			b.ReportMetric(float64(total)/float64(tokens), "bytes/token")
		})
	}
}

// BenchmarkEncodeBatch encodes the same documents with EncodeBatch over GOMAXPROCS goroutines.
func BenchmarkEncodeBatch(b *testing.B) {
	tok := neoxTokenizer(b)
	docs, total := benchDocs(b)
	b.SetBytes(total)
	for b.Loop() {
		tok.EncodeBatch(docs)
	}
}

// BenchmarkDecode decodes the ids of the mixed text.
func BenchmarkDecode(b *testing.B) {
	tok := neoxTokenizer(b)
	docs, total := benchDocs(b)
	ids := tok.EncodeBatch(docs)
	b.SetBytes(total)
	for b.Loop() {
		for _, d := range ids {
			tok.Decode(d)
		}
	}
}
