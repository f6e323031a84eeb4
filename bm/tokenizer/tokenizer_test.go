package tokenizer

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

var neox struct {
	once sync.Once
	tok  *Tokenizer
	err  error
}

// neoxTokenizer returns the cached NeoX-20B tokenizer, skipping the test if it has not been fetched
// (tests never use the network; "blackmamba data tokenizer" fetches it).
func neoxTokenizer(tb testing.TB) *Tokenizer {
	tb.Helper()
	neox.once.Do(func() { neox.tok, neox.err = LoadNeoX(DefaultDataDir()) })
	if errors.Is(neox.err, ErrNotCached) {
		tb.Skipf("NeoX-20B tokenizer not cached (%v); run \"blackmamba data tokenizer\" first", neox.err)
	}
	if neox.err != nil {
		tb.Fatal(neox.err)
	}
	return neox.tok
}

// goldenDoc is one line of testdata/golden_docs.jsonl joined with its reference ids.
type goldenDoc struct {
	Name     string `json:"name"`
	Text     string `json:"text"`
	BytesB64 string `json:"bytes_b64"`
	input    string // the document as given to Encode (possibly invalid UTF-8)
	ids      []int  // reference ids
}

func readJSONL(tb testing.TB, path string, each func(line int, data []byte) error) {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for line := 1; sc.Scan(); line++ {
		if err := each(line, sc.Bytes()); err != nil {
			tb.Fatalf("%s:%d: %v", path, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
}

func loadGolden(tb testing.TB) []goldenDoc {
	tb.Helper()
	var docs []goldenDoc
	readJSONL(tb, "testdata/golden_docs.jsonl", func(_ int, data []byte) error {
		var d goldenDoc
		if err := json.Unmarshal(data, &d); err != nil {
			return err
		}
		d.input = d.Text
		if d.BytesB64 != "" {
			b, err := base64.StdEncoding.DecodeString(d.BytesB64)
			if err != nil {
				return fmt.Errorf("%s: %v", d.Name, err)
			}
			d.input = string(b)
		}
		docs = append(docs, d)
		return nil
	})
	readJSONL(tb, "testdata/golden_ids.jsonl", func(line int, data []byte) error {
		var r struct {
			Name string `json:"name"`
			IDs  []int  `json:"ids"`
		}
		if err := json.Unmarshal(data, &r); err != nil {
			return err
		}
		if line > len(docs) || docs[line-1].Name != r.Name {
			return fmt.Errorf("ids for %q do not line up with golden_docs.jsonl", r.Name)
		}
		docs[line-1].ids = r.IDs
		return nil
	})
	return docs
}

// describeMismatch shows where two id sequences first differ, with the tokens around it.
func describeMismatch(tok *Tokenizer, got, want []int) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	show := func(ids []int) string {
		lo, hi := max(0, i-3), min(len(ids), i+4)
		var parts []string
		for _, id := range ids[lo:hi] {
			t, _ := tok.Token(id)
			parts = append(parts, fmt.Sprintf("%d:%q", id, t))
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprintf("first difference at token %d (len got %d, want %d)\n  got:  %s\n  want: %s",
		i, len(got), len(want), show(got), show(want))
}

// TestGolden checks that Encode and EncodeBatch give exactly the reference ids (Hugging Face
// tokenizers, JavaScript port 0.2.0, with Oniguruma's \s) on every golden document.
func TestGolden(t *testing.T) {
	tok := neoxTokenizer(t)
	docs := loadGolden(t)
	if len(docs) < 200 {
		t.Fatalf("only %d golden documents", len(docs))
	}
	inputs := make([]string, len(docs))
	for i, d := range docs {
		inputs[i] = d.input
	}
	batch := tok.EncodeBatch(inputs)
	matchedDocs, matchedTokens, totalTokens := 0, 0, 0
	for i, d := range docs {
		totalTokens += len(d.ids)
		got := tok.Encode(d.input)
		if !slices.Equal(got, d.ids) {
			t.Errorf("%s: %s", d.Name, describeMismatch(tok, got, d.ids))
			continue
		}
		if !slices.Equal(batch[i], d.ids) {
			t.Errorf("%s: EncodeBatch differs from Encode: %s", d.Name, describeMismatch(tok, batch[i], d.ids))
			continue
		}
		matchedDocs++
		matchedTokens += len(got)
	}
	t.Logf("golden: %d/%d documents, %d/%d tokens identical to the reference", matchedDocs, len(docs), matchedTokens, totalTokens)
}

// nfcOutsideSpecials is the text that Decode(Encode(s)) must return for NeoX-20B: s made valid
// UTF-8, with NFC applied to the stretches between the special tokens (which are cut out of the
// raw text before normalization, so NFC never combines across them).
func nfcOutsideSpecials(s string) string {
	s = ValidUTF8(s)
	var b strings.Builder
	for {
		i, n := -1, 0
		for _, sp := range []string{"<|endoftext|>", "<|padding|>"} {
			if j := strings.Index(s, sp); j >= 0 && (i < 0 || j < i) {
				i, n = j, len(sp)
			}
		}
		if i < 0 {
			b.WriteString(norm.NFC.String(s))
			return b.String()
		}
		b.WriteString(norm.NFC.String(s[:i]))
		b.WriteString(s[i : i+n])
		s = s[i+n:]
	}
}

func checkRoundTrip(tb testing.TB, tok *Tokenizer, name, s string) {
	tb.Helper()
	ids := tok.Encode(s)
	for _, id := range ids {
		if _, ok := tok.Token(id); !ok {
			tb.Fatalf("%s: Encode(%q) produced id %d which is not a token", name, s, id)
		}
	}
	if got, want := tok.Decode(ids), nfcOutsideSpecials(s); got != want {
		tb.Fatalf("%s: Decode(Encode(%q)) = %q, want %q", name, s, got, want)
	}
}

func TestRoundTripGolden(t *testing.T) {
	tok := neoxTokenizer(t)
	for _, d := range loadGolden(t) {
		checkRoundTrip(t, tok, d.Name, d.input)
		// The reference ids decode to the same text.
		if got, want := tok.Decode(d.ids), nfcOutsideSpecials(d.input); got != want {
			t.Errorf("%s: Decode(reference ids) = %q, want %q", d.Name, got, want)
		}
	}
}

// randomText draws n characters from a mix of ASCII, whitespace, special tokens, combining marks
// and arbitrary valid code points (all planes, unassigned ones included).
func randomText(r *rand.Rand, n int) string {
	var b strings.Builder
	pieces := []string{" ", "  ", "\t", "\n", "\r\n", "'s", "'ll", "<|endoftext|>", "<|padding|>", "<|", "|>", "\u0301", "\u0338", "\u00a0", "\u0085", "\ufeff", "e\u0301", "👩‍💻"}
	for range n {
		switch k := r.IntN(10); {
		case k < 4:
			b.WriteByte(byte(0x20 + r.IntN(0x5f)))
		case k < 6:
			b.WriteString(pieces[r.IntN(len(pieces))])
		case k < 8:
			b.WriteRune(rune(0x80 + r.IntN(0x3000)))
		default:
			c := rune(r.IntN(0x110000))
			if !utf8.ValidRune(c) {
				c = 'x'
			}
			b.WriteRune(c)
		}
	}
	return b.String()
}

func TestRoundTripRandom(t *testing.T) {
	tok := neoxTokenizer(t)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		checkRoundTrip(t, tok, fmt.Sprintf("random %d", i), randomText(r, r.IntN(80)))
	}
}

// TestBPEHeapMatchesQuadratic checks that the two merge loops agree, on pieces short enough for both.
func TestBPEHeapMatchesQuadratic(t *testing.T) {
	tok := neoxTokenizer(t)
	r := rand.New(rand.NewPCG(3, 4))
	alphabets := []string{"abcdefghij", "aeiou rst", "0123456789", "  \n\t", "日本語テキスト", "xyzXYZ!?.,"}
	for i := range 2000 {
		a := []rune(alphabets[i%len(alphabets)])
		var b strings.Builder
		for b.Len() < 2+r.IntN(quadraticMax-1) {
			b.WriteRune(a[r.IntN(len(a))])
		}
		piece := b.String()
		if len(piece) > quadraticMax {
			piece = piece[:quadraticMax]
		}
		q := tok.bpe.mergeQuadratic(nil, piece)
		h := tok.bpe.mergeHeap(piece)
		if !slices.Equal(q, h) {
			t.Fatalf("piece %q: quadratic %v, heap %v", piece, q, h)
		}
	}
}

// TestLongPieces runs the heap merge loop (pieces over quadraticMax bytes) on very long pieces; the
// golden set checks it against the reference on pieces of 400 to 900 bytes.
func TestLongPieces(t *testing.T) {
	tok := neoxTokenizer(t)
	for _, s := range []string{strings.Repeat("ab", 5000), strings.Repeat("9", 3001), strings.Repeat("é", 777)} {
		a, b := tok.Encode(s), tok.Encode(s)
		if !slices.Equal(a, b) {
			t.Fatalf("Encode is not deterministic on a %d-byte piece", len(s))
		}
		checkRoundTrip(t, tok, "long", s)
	}
}

func TestEncodeSmall(t *testing.T) {
	tok := neoxTokenizer(t)
	for _, tc := range []struct {
		in   string
		want []int
	}{
		// Expected ids from the reference tokenizer.
		{"", []int{}},
		{"Hello world, it's   me<|endoftext|>x  y", []int{12092, 1533, 13, 352, 434, 50275, 1405, 0, 89, 50276, 90}},
		{" \ufeffHello", []int{35762, 12092}},
		{"a \u0085b", []int{66, 209, 16643, 67}},
	} {
		if got := tok.Encode(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := tok.VocabSize(); got != 50277 {
		t.Errorf("VocabSize() = %d, want 50277", got)
	}
	if !tok.IsSpecial(EOS) || !tok.IsSpecial(Padding) || tok.IsSpecial(50254) || tok.IsSpecial(100) {
		t.Errorf("IsSpecial wrong for EOS/Padding/space run/ordinary token")
	}
	if s, _ := tok.Token(EOS); s != "<|endoftext|>" {
		t.Errorf("Token(EOS) = %q", s)
	}
	if id, ok := tok.ID("Ġworld"); !ok || id != 1533 {
		t.Errorf("ID(Ġworld) = %d, %v; want 1533", id, ok)
	}
	// Ids that are not tokens (the padded rows of a model's embedding) are skipped when decoding.
	if got := tok.Decode([]int{12092, 50277, 60000, -1, 1533}); got != "Hello world" {
		t.Errorf("Decode with out-of-range ids = %q", got)
	}
	// A character split across tokens decodes to U+FFFD when cut, and exactly when joined.
	ids := tok.Encode("\U0001D518")
	if len(ids) < 2 {
		t.Fatalf("Encode(U+1D518) = %v; expected byte-level pieces", ids)
	}
	if got := tok.Decode(ids[:1]); got != "\ufffd" {
		t.Errorf("Decode(first token of U+1D518) = %q, want U+FFFD", got)
	}
	if got := string(tok.DecodeBytes(ids)); got != "\U0001D518" {
		t.Errorf("DecodeBytes = %q", got)
	}
}
