package tokenizer

import (
	"slices"
	"testing"
)

// FuzzEncode checks, for any input (invalid UTF-8 included), that Encode does not panic, returns
// only real token ids, agrees with EncodeBatch, and that Decode gives back the input made valid and
// NFC-normalized between special tokens. The seed corpus (run by plain "go test") holds the golden
// documents; run "go test -fuzz FuzzEncode -fuzztime 1m ./bm/tokenizer" to explore further.
func FuzzEncode(f *testing.F) {
	for _, s := range []string{"", " ", "Hello, world!", "a\u0301<|endoftext|>\u0338", "\xff\xfe<|pad", "   \t\r\n  x"} {
		f.Add(s)
	}
	for _, d := range loadGolden(f) {
		f.Add(d.input)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok := neoxTokenizer(t)
		checkRoundTrip(t, tok, "fuzz", s)
		if batch := tok.EncodeBatch([]string{s, s}); len(batch) != 2 || !slices.Equal(batch[0], batch[1]) || !slices.Equal(batch[0], tok.Encode(s)) {
			t.Fatalf("EncodeBatch disagrees with Encode on %q", s)
		}
	})
}
