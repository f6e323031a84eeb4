package tokenizer

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Token ids of the control tokens of the GPT-NeoX-20B tokenizer.
const (
	// EOS is <|endoftext|>, which separates documents.
	EOS = 0
	// Padding is <|padding|>.
	Padding = 1
)

// Tokenizer encodes text to token ids and back. It is safe for concurrent use.
type Tokenizer struct {
	name           string // file the tokenizer was loaded from, for messages
	bpe            *bpe
	nfc            bool
	addPrefixSpace bool
	useRegex       bool
	raw            *addedMatcher // added tokens matched on the raw text (normalized: false)
	normalized     *addedMatcher // added tokens matched on the normalized text (normalized: true)
	added          []AddedToken
	tokens         []string // id -> token as written in the file ("" where no token has that id)
	decoded        [][]byte // id -> bytes it decodes to (nil where no token has that id)
	special        []bool   // id -> whether it is a special added token
	ids            map[string]int
}

// Encode returns the token ids of s. Invalid UTF-8 in s is first replaced as by ValidUTF8.
func (t *Tokenizer) Encode(s string) []int {
	return t.AppendEncode(make([]int, 0, len(s)/3+1), s)
}

// AppendEncode appends the token ids of s to dst and returns the extended slice.
func (t *Tokenizer) AppendEncode(dst []int, s string) []int {
	s = ValidUTF8(s)
	encodeText := func(p string) {
		if t.addPrefixSpace && !strings.HasPrefix(p, " ") {
			p = " " + p
		}
		if !t.useRegex {
			dst = t.bpe.appendEncode(dst, p)
			return
		}
		preTokenize(p, func(piece string) { dst = t.bpe.appendEncode(dst, piece) })
	}
	addToken := func(tok AddedToken) { dst = append(dst, tok.ID) }
	t.raw.split(s, func(part string) {
		if t.nfc {
			part = norm.NFC.String(part)
		}
		t.normalized.split(part, encodeText, addToken)
	}, addToken)
	return dst
}

// EncodeBatch encodes each document, in parallel over GOMAXPROCS goroutines; out[i] holds the ids
// of docs[i].
func (t *Tokenizer) EncodeBatch(docs []string) [][]int {
	out := make([][]int, len(docs))
	workers := min(runtime.GOMAXPROCS(0), len(docs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(docs) {
					return
				}
				out[i] = t.Encode(docs[i])
			}
		})
	}
	wg.Wait()
	return out
}

// AppendDecodeBytes appends the bytes that ids stand for to dst. Ids that no token has (such as the
// rows by which a model's vocabulary is padded) are skipped, as the Hugging Face library does. The
// bytes of consecutive tokens may split a UTF-8 character; a streaming caller should hold back an
// incomplete trailing character until the next token arrives.
func (t *Tokenizer) AppendDecodeBytes(dst []byte, ids []int) []byte {
	for _, id := range ids {
		if id >= 0 && id < len(t.decoded) {
			dst = append(dst, t.decoded[id]...)
		}
	}
	return dst
}

// DecodeBytes returns the bytes that ids stand for (see AppendDecodeBytes).
func (t *Tokenizer) DecodeBytes(ids []int) []byte { return t.AppendDecodeBytes(nil, ids) }

// Decode returns the text of ids, special tokens included. Byte sequences that are not valid UTF-8
// (a token sequence cut inside a character) are replaced by U+FFFD as in ValidUTF8.
func (t *Tokenizer) Decode(ids []int) string {
	b := t.DecodeBytes(ids)
	if utf8.Valid(b) {
		return string(b)
	}
	return string(appendValidUTF8(make([]byte, 0, len(b)+8), b))
}

// VocabSize returns the number of token ids: one more than the largest id (50277 for NeoX-20B).
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// Token returns the token of id as written in the tokenizer file (byte-level form, e.g. "Ġthe" for
// " the"; added tokens as their text), and whether id is a token.
func (t *Tokenizer) Token(id int) (string, bool) {
	if id < 0 || id >= len(t.tokens) || t.decoded[id] == nil {
		return "", false
	}
	return t.tokens[id], true
}

// ID returns the id of a token written as in the tokenizer file, and whether it exists.
func (t *Tokenizer) ID(token string) (int, bool) {
	id, ok := t.ids[token]
	return id, ok
}

// IsSpecial reports whether id is a special added token (for NeoX-20B: EOS and Padding).
func (t *Tokenizer) IsSpecial(id int) bool { return id >= 0 && id < len(t.special) && t.special[id] }

// AddedTokens returns the added tokens in file order.
func (t *Tokenizer) AddedTokens() []AddedToken { return append([]AddedToken(nil), t.added...) }

// Name returns the file (or name) the tokenizer was loaded from.
func (t *Tokenizer) Name() string { return t.name }
