package tokenizer

import (
	"unicode/utf8"
)

// ValidUTF8 returns s with every maximal invalid UTF-8 subsequence replaced by one U+FFFD, the rule
// of the WHATWG Encoding Standard (and of Unicode's "substitution of maximal subparts"), which Node's
// Buffer.toString("utf8"), JavaScript's TextDecoder and Rust's String::from_utf8_lossy follow. A
// maximal subpart is the longest prefix of a well-formed sequence: for example E2 82 41 becomes
// U+FFFD "A" (one replacement), while ED A0 80 (an encoded surrogate) becomes three. Valid input is
// returned unchanged without copying.
func ValidUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return string(appendValidUTF8(make([]byte, 0, len(s)+8), s))
}

// appendValidUTF8 appends s to dst with invalid subsequences replaced as in ValidUTF8.
func appendValidUTF8[S string | []byte](dst []byte, s S) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		n := wellFormedPrefix(s[i:])
		if n < 0 {
			// A complete, valid multi-byte sequence of length -n.
			dst = append(dst, s[i:i-n]...)
			i -= n
			continue
		}
		dst = utf8.AppendRune(dst, utf8.RuneError)
		i += n
	}
	return dst
}

// wellFormedPrefix inspects the multi-byte sequence starting at s[0] (s[0] >= 0x80). If it is a
// complete well-formed sequence it returns minus its length; otherwise it returns the length (>= 1)
// of the maximal subpart to replace by one U+FFFD.
func wellFormedPrefix[S string | []byte](s S) int {
	c := s[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c >= 0xE0 && c <= 0xEF:
		need = 2
		if c == 0xE0 {
			lo = 0xA0
		} else if c == 0xED {
			hi = 0x9F
		}
	case c >= 0xF0 && c <= 0xF4:
		need = 3
		if c == 0xF0 {
			lo = 0x90
		} else if c == 0xF4 {
			hi = 0x8F
		}
	default:
		return 1 // 80..C1 and F5..FF never start a sequence
	}
	for k := 1; k <= need; k++ {
		if k >= len(s) || s[k] < lo || s[k] > hi {
			return k
		}
		lo, hi = 0x80, 0xBF
	}
	return -(need + 1)
}
