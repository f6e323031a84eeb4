package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Load reads a Hugging Face tokenizer.json describing a byte-level BPE tokenizer (model "BPE",
// ByteLevel pre-tokenizer and decoder, optional NFC normalizer, added tokens). Configurations it
// cannot reproduce exactly (other normalizers, pre-tokenizers, decoders, post-processors that add
// tokens, truncation, padding, BPE dropout, subword prefixes) are rejected with an error naming the
// file and the field.
func Load(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return Parse(path, data)
}

// fileJSON is the part of tokenizer.json that the tokenizer uses.
type fileJSON struct {
	AddedTokens   []AddedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Truncation    json.RawMessage `json:"truncation"`
	Padding       json.RawMessage `json:"padding"`
	Model         *modelJSON      `json:"model"`
}

type modelJSON struct {
	Type                    string          `json:"type"`
	Dropout                 *float64        `json:"dropout"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Vocab                   map[string]int  `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
}

// component is a normalizer, pre-tokenizer, post-processor or decoder entry.
type component struct {
	Type           string            `json:"type"`
	AddPrefixSpace *bool             `json:"add_prefix_space"`
	UseRegex       *bool             `json:"use_regex"`
	Normalizers    []json.RawMessage `json:"normalizers"`
	PreTokenizers  []json.RawMessage `json:"pretokenizers"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// Parse builds a tokenizer from the contents of a tokenizer.json; name is used in error messages.
func Parse(name string, data []byte) (*Tokenizer, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("tokenizer: %s: %s", name, fmt.Sprintf(format, args...))
	}
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return nil, fail("invalid JSON at byte offset %d: %v", syn.Offset, err)
		case errors.As(err, &typ):
			return nil, fail("field %q at byte offset %d: %v", typ.Field, typ.Offset, err)
		}
		return nil, fail("invalid JSON: %v", err)
	}
	if f.Model == nil {
		return nil, fail("no \"model\" object; not a Hugging Face tokenizer.json")
	}
	m := f.Model
	if m.Type != "BPE" && m.Type != "" {
		return nil, fail("model.type is %q; only byte-level \"BPE\" is supported", m.Type)
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, fail("model.dropout is %g; BPE dropout is not supported", *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fail("model.continuing_subword_prefix %q is not supported", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fail("model.end_of_word_suffix %q is not supported", *m.EndOfWordSuffix)
	}
	if len(m.Vocab) == 0 {
		return nil, fail("model.vocab is missing or empty")
	}
	if !isNull(f.Truncation) {
		return nil, fail("truncation is set; only \"truncation\": null is supported")
	}
	if !isNull(f.Padding) {
		return nil, fail("padding is set; only \"padding\": null is supported")
	}

	t := &Tokenizer{name: name, useRegex: true}
	if err := t.setNormalizer(f.Normalizer); err != nil {
		return nil, fail("%v", err)
	}
	if err := t.setPreTokenizer(f.PreTokenizer); err != nil {
		return nil, fail("%v", err)
	}
	for _, c := range []struct {
		field string
		raw   json.RawMessage
	}{{"post_processor", f.PostProcessor}, {"decoder", f.Decoder}} {
		if isNull(c.raw) {
			continue
		}
		var comp component
		if err := json.Unmarshal(c.raw, &comp); err != nil {
			return nil, fail("%s: %v", c.field, err)
		}
		if comp.Type != "ByteLevel" {
			return nil, fail("%s.type is %q; only \"ByteLevel\" is supported", c.field, comp.Type)
		}
	}

	// Vocabulary: the file writes tokens with each byte shown as one character (GPT-2's
	// byte-to-unicode table); BPE works on the raw bytes.
	charToByte := byteLevelDecoding()
	maxID := -1
	for tok, id := range m.Vocab {
		if id < 0 {
			return nil, fail("model.vocab[%q] has negative id %d", tok, id)
		}
		maxID = max(maxID, id)
	}
	for _, a := range f.AddedTokens {
		if a.ID < 0 {
			return nil, fail("added_tokens: token %q has negative id %d", a.Content, a.ID)
		}
		if a.Content == "" {
			return nil, fail("added_tokens: token with id %d has empty content", a.ID)
		}
		maxID = max(maxID, a.ID)
	}
	n := maxID + 1
	t.tokens = make([]string, n)
	t.decoded = make([][]byte, n)
	t.special = make([]bool, n)
	t.ids = make(map[string]int, len(m.Vocab)+len(f.AddedTokens))
	b := &bpe{merges: make(map[uint64]merge), ignoreMerges: m.IgnoreMerges, cache: newBPECache()}
	if m.IgnoreMerges {
		b.vocab = make(map[string]int32, len(m.Vocab))
	}
	byBytes := make(map[string]int32, len(m.Vocab))
	for tok, id := range m.Vocab {
		if t.decoded[id] != nil {
			return nil, fail("model.vocab: id %d is used by both %q and %q", id, t.tokens[id], tok)
		}
		t.tokens[id] = tok
		t.ids[tok] = id
		raw, ok := bytesOfToken(tok, charToByte)
		if !ok {
			// Not byte-level text; BPE never produces it, and it decodes to its own UTF-8.
			t.decoded[id] = []byte(tok)
			continue
		}
		t.decoded[id] = raw
		byBytes[string(raw)] = int32(id)
		if b.vocab != nil {
			b.vocab[string(raw)] = int32(id)
		}
	}
	// Every byte that valid UTF-8 can contain needs a token (input is made valid UTF-8 first, so
	// C0, C1 and F5..FF never reach BPE; NeoX-20B has no tokens for them).
	for c := 0; c < 256; c++ {
		id, ok := byBytes[string([]byte{byte(c)})]
		if !ok {
			if c == 0xC0 || c == 0xC1 || c >= 0xF5 {
				b.byteID[c] = -1
				continue
			}
			return nil, fail("model.vocab has no token for byte 0x%02X (%q); not a byte-level BPE vocabulary",
				c, string(byteLevelEncoding()[c]))
		}
		b.byteID[c] = id
	}

	merges, err := parseMerges(m.Merges)
	if err != nil {
		return nil, fail("model.merges: %v", err)
	}
	for rank, pair := range merges {
		left, lok := m.Vocab[pair[0]]
		right, rok := m.Vocab[pair[1]]
		merged, mok := m.Vocab[pair[0]+pair[1]]
		switch {
		case !lok:
			return nil, fail("model.merges[%d]: %q is not in model.vocab", rank, pair[0])
		case !rok:
			return nil, fail("model.merges[%d]: %q is not in model.vocab", rank, pair[1])
		case !mok:
			return nil, fail("model.merges[%d]: merged token %q is not in model.vocab", rank, pair[0]+pair[1])
		}
		// As in the reference implementations, a repeated pair takes its last rank.
		b.merges[pairKey(int32(left), int32(right))] = merge{rank: int32(rank), id: int32(merged)}
	}
	t.bpe = b

	// Added tokens: they take their id's decoding (their text) and are matched before BPE.
	var raw, normalized []AddedToken
	for _, a := range f.AddedTokens {
		t.added = append(t.added, a)
		t.tokens[a.ID] = a.Content
		t.decoded[a.ID] = []byte(a.Content)
		t.special[a.ID] = a.Special
		t.ids[a.Content] = a.ID
		if a.Normalized {
			normalized = append(normalized, a)
		} else {
			raw = append(raw, a)
		}
	}
	t.raw = newAddedMatcher(raw, func(a AddedToken) string { return a.Content })
	t.normalized = newAddedMatcher(normalized, func(a AddedToken) string {
		if t.nfc {
			return norm.NFC.String(a.Content)
		}
		return a.Content
	})
	return t, nil
}

// setNormalizer accepts no normalizer, NFC, or a Sequence of those.
func (t *Tokenizer) setNormalizer(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("normalizer: %v", err)
	}
	switch c.Type {
	case "NFC":
		t.nfc = true
		return nil
	case "Sequence":
		for i, sub := range c.Normalizers {
			if err := t.setNormalizer(sub); err != nil {
				return fmt.Errorf("normalizer.normalizers[%d]: %v", i, err)
			}
		}
		return nil
	}
	return fmt.Errorf("normalizer.type is %q; only \"NFC\" is supported", c.Type)
}

// setPreTokenizer accepts a ByteLevel pre-tokenizer, alone or as the only element of a Sequence.
func (t *Tokenizer) setPreTokenizer(raw json.RawMessage) error {
	if isNull(raw) {
		return errors.New("pre_tokenizer is missing; a ByteLevel pre-tokenizer is required")
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("pre_tokenizer: %v", err)
	}
	switch c.Type {
	case "ByteLevel":
		if c.AddPrefixSpace != nil {
			t.addPrefixSpace = *c.AddPrefixSpace
		}
		if c.UseRegex != nil {
			t.useRegex = *c.UseRegex
		}
		return nil
	case "Sequence":
		if len(c.PreTokenizers) == 1 {
			return t.setPreTokenizer(c.PreTokenizers[0])
		}
		return fmt.Errorf("pre_tokenizer is a Sequence of %d; only a single ByteLevel is supported", len(c.PreTokenizers))
	}
	return fmt.Errorf("pre_tokenizer.type is %q; only \"ByteLevel\" is supported", c.Type)
}

// parseMerges reads merges written either as "left right" strings or as ["left", "right"] pairs.
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var asStrings []string
	if err := json.Unmarshal(raw, &asStrings); err == nil {
		out := make([][2]string, len(asStrings))
		for i, s := range asStrings {
			left, right, ok := strings.Cut(s, " ")
			if !ok || left == "" || right == "" || strings.Contains(right, " ") {
				return nil, fmt.Errorf("entry %d (%q) is not two tokens separated by one space", i, s)
			}
			out[i] = [2]string{left, right}
		}
		return out, nil
	}
	var asPairs [][]string
	if err := json.Unmarshal(raw, &asPairs); err != nil {
		return nil, fmt.Errorf("neither a list of \"a b\" strings nor of [\"a\", \"b\"] pairs: %v", err)
	}
	out := make([][2]string, len(asPairs))
	for i, p := range asPairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("entry %d has %d elements, want 2", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// byteLevelEncoding returns GPT-2's byte-to-character table: printable Latin-1 bytes stand for
// themselves, and the other 68 bytes are given the characters U+0100, U+0101, ... in byte order.
func byteLevelEncoding() [256]rune {
	var enc [256]rune
	next := rune(256)
	for c := 0; c < 256; c++ {
		if (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF) {
			enc[c] = rune(c)
		} else {
			enc[c] = next
			next++
		}
	}
	return enc
}

// byteLevelDecoding inverts byteLevelEncoding.
func byteLevelDecoding() map[rune]byte {
	dec := make(map[rune]byte, 256)
	for c, r := range byteLevelEncoding() {
		dec[r] = byte(c)
	}
	return dec
}

// bytesOfToken converts a byte-level token to its bytes; ok is false if a character is not in the
// byte-level table.
func bytesOfToken(tok string, charToByte map[rune]byte) (raw []byte, ok bool) {
	raw = make([]byte, 0, utf8.RuneCountInString(tok))
	for _, r := range tok {
		c, found := charToByte[r]
		if !found {
			return nil, false
		}
		raw = append(raw, c)
	}
	return raw, true
}
