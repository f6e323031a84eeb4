package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// charClass is the class of a character for the GPT-2 pre-tokenizer pattern.
type charClass uint8

const (
	classOther  charClass = iota // [^\s\p{L}\p{N}]
	classLetter                  // \p{L}
	classNumber                  // \p{N}
	classSpace                   // \s: the Unicode White_Space property
)

// asciiClass holds the class of each ASCII character (a constant table).
var asciiClass = func() (t [utf8.RuneSelf]charClass) {
	for r := rune(0); r < utf8.RuneSelf; r++ {
		t[r] = classOfRune(r)
	}
	return t
}()

// classOfRune classifies r. \s is White_Space, which is what Oniguruma (the engine behind the Rust
// tokenizers library) uses; it includes U+0085 and excludes U+FEFF, unlike JavaScript's \s.
func classOfRune(r rune) charClass {
	switch {
	case unicode.IsSpace(r):
		return classSpace
	case unicode.IsLetter(r):
		return classLetter
	case unicode.IsNumber(r):
		return classNumber
	}
	return classOther
}

// runeAt decodes the (valid UTF-8) character at s[i] and returns it with its class and width.
func runeAt(s string, i int) (rune, charClass, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), asciiClass[c], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	return r, classOfRune(r), w
}

// scanClass returns the end of the run of characters of class c starting at s[i].
func scanClass(s string, i int, c charClass) int {
	for i < len(s) {
		_, ci, w := runeAt(s, i)
		if ci != c {
			break
		}
		i += w
	}
	return i
}

// contraction returns the length of the English contraction suffix ('s 't 're 've 'm 'll 'd, case
// sensitive) that s starts with, after its apostrophe, or 0.
func contraction(s string) int {
	if len(s) == 0 {
		return 0
	}
	switch s[0] {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if len(s) >= 2 && s[1] == 'e' {
			return 2
		}
	case 'l':
		if len(s) >= 2 && s[1] == 'l' {
			return 2
		}
	}
	return 0
}

// preTokenize splits s (valid UTF-8) into consecutive pieces exactly as the GPT-2 pattern
//
//	's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// matches them, calling emit for each piece in order; the pieces cover s.
func preTokenize(s string, emit func(piece string)) {
	for i := 0; i < len(s); {
		r, cls, w := runeAt(s, i)
		if r == '\'' {
			if n := contraction(s[i+1:]); n > 0 {
				emit(s[i : i+1+n])
				i += 1 + n
				continue
			}
		}
		// " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": a space joins the run that follows it.
		if r == ' ' && i+1 < len(s) {
			if _, c2, w2 := runeAt(s, i+1); c2 != classSpace {
				j := scanClass(s, i+1+w2, c2)
				emit(s[i:j])
				i = j
				continue
			}
		}
		if cls != classSpace {
			j := scanClass(s, i+w, cls)
			emit(s[i:j])
			i = j
			continue
		}
		// "\s+(?!\S)|\s+": a whitespace run, less its last character when a non-space follows
		// (that character then starts the next piece, possibly as the optional leading space).
		j, last := i+w, i
		for j < len(s) {
			_, c3, w3 := runeAt(s, j)
			if c3 != classSpace {
				break
			}
			last = j
			j += w3
		}
		if j < len(s) && last > i {
			j = last
		}
		emit(s[i:j])
		i = j
	}
}
