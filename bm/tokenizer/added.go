package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// AddedToken is an entry of the "added_tokens" list of a tokenizer.json: text matched as a whole
// before normalization (Normalized false) or after it (Normalized true), and never split by BPE.
type AddedToken struct {
	ID      int    `json:"id"`
	Content string `json:"content"`
	// SingleWord: match only when not preceded or followed by a word character.
	SingleWord bool `json:"single_word"`
	// LStrip, RStrip: the token absorbs (drops) the whitespace on its left / right.
	LStrip bool `json:"lstrip"`
	RStrip bool `json:"rstrip"`
	// Normalized: match against the normalized text rather than the raw input.
	Normalized bool `json:"normalized"`
	// Special: a control token (end of text, padding), as opposed to ordinary added text.
	Special bool `json:"special"`
}

// addedMatcher finds added tokens in text, leftmost-longest, with a byte trie.
type addedMatcher struct {
	tokens []AddedToken
	first  [256]bool // bytes that start some token
	nodes  []trieNode
}

type trieNode struct {
	edges []trieEdge
	token int // index in tokens of the token ending here, or -1
}

type trieEdge struct {
	b    byte
	node int
}

// newAddedMatcher builds a matcher for tokens whose match text is given by text(token).
func newAddedMatcher(tokens []AddedToken, text func(AddedToken) string) *addedMatcher {
	if len(tokens) == 0 {
		return nil
	}
	m := &addedMatcher{tokens: tokens, nodes: []trieNode{{token: -1}}}
	for ti, tok := range tokens {
		s := text(tok)
		if s == "" {
			continue
		}
		m.first[s[0]] = true
		n := 0
		for i := 0; i < len(s); i++ {
			n = m.child(n, s[i], true)
		}
		if m.nodes[n].token < 0 {
			m.nodes[n].token = ti
		}
	}
	return m
}

func (m *addedMatcher) child(n int, b byte, create bool) int {
	for _, e := range m.nodes[n].edges {
		if e.b == b {
			return e.node
		}
	}
	if !create {
		return -1
	}
	m.nodes = append(m.nodes, trieNode{token: -1})
	c := len(m.nodes) - 1
	m.nodes[n].edges = append(m.nodes[n].edges, trieEdge{b, c})
	return c
}

// split walks s, calling text for each stretch without added tokens and token for each added token
// found, in order. Matching follows the Hugging Face tokenizers library: at the leftmost position
// where a token starts, the longest one is taken; a single_word token adjacent to a word character
// is ignored (and its text searched no further); lstrip/rstrip extend the match over neighbouring
// whitespace, which is dropped.
func (m *addedMatcher) split(s string, text func(string), token func(AddedToken)) {
	if m == nil {
		if s != "" {
			text(s)
		}
		return
	}
	pending := 0 // start of text not yet emitted
	for i := 0; i < len(s); {
		if !m.first[s[i]] {
			i++
			continue
		}
		best, end := -1, 0
		for n, j := 0, i; j < len(s); j++ {
			if n = m.child(n, s[j], false); n < 0 {
				break
			}
			if t := m.nodes[n].token; t >= 0 {
				best, end = t, j+1
			}
		}
		if best < 0 {
			i++
			continue
		}
		tok := m.tokens[best]
		start := i
		if tok.SingleWord && (endsWithWord(s[:start]) || startsWithWord(s[end:])) {
			i = end
			continue
		}
		if tok.LStrip {
			start = max(pending, start-trailingSpace(s[:start]))
		}
		if tok.RStrip {
			end += leadingSpace(s[end:])
		}
		if start > pending {
			text(s[pending:start])
		}
		token(tok)
		pending, i = end, end
	}
	if pending < len(s) {
		text(s[pending:])
	}
}

// isWordChar reports whether r is matched by \w in Rust's regex crate: Alphabetic, marks, decimal
// digits, connector punctuation and join controls.
func isWordChar(r rune) bool {
	return unicode.IsLetter(r) || unicode.Is(unicode.Nl, r) || unicode.Is(unicode.Other_Alphabetic, r) ||
		unicode.Is(unicode.M, r) || unicode.Is(unicode.Nd, r) || unicode.Is(unicode.Pc, r) ||
		unicode.Is(unicode.Join_Control, r)
}

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return s != "" && isWordChar(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return s != "" && isWordChar(r)
}

// trailingSpace returns the byte length of the whitespace at the end of s.
func trailingSpace(s string) int {
	n := 0
	for n < len(s) {
		r, w := utf8.DecodeLastRuneInString(s[:len(s)-n])
		if !unicode.IsSpace(r) {
			break
		}
		n += w
	}
	return n
}

// leadingSpace returns the byte length of the whitespace at the start of s.
func leadingSpace(s string) int {
	n := 0
	for n < len(s) {
		r, w := utf8.DecodeRuneInString(s[n:])
		if !unicode.IsSpace(r) {
			break
		}
		n += w
	}
	return n
}
