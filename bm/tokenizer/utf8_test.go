package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValidUTF8(t *testing.T) {
	const r = "\ufffd"
	// Expected outputs are those of Node's Buffer.toString("utf8") (WHATWG maximal subparts).
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"valid", []byte("héllo 世界 🙂"), "héllo 世界 🙂"},
		{"truncated 3-byte then ASCII", []byte{0xe2, 0x82, 0x41}, r + "A"},
		{"F0 then bad continuation", []byte{0xf0, 0x80}, r + r},
		{"encoded surrogate", []byte{0xed, 0xa0, 0x80}, r + r + r},
		{"overlong 2-byte", []byte{0xc0, 0xaf}, r + r},
		{"above U+10FFFF", []byte{0xf4, 0x90, 0x80, 0x80}, r + r + r + r},
		{"truncated 4-byte", []byte{0xf0, 0x9f, 0x98}, r},
		{"FF FE then ASCII", []byte{0xff, 0xfe, 0x41}, r + r + "A"},
		{"overlong 3-byte", []byte{0xe0, 0x80, 0x80}, r + r + r},
		{"truncated 4-byte then ASCII", []byte{0xf0, 0x9f, 0x98, 0x41}, r + "A"},
		{"lone continuations", []byte{0x61, 0x80, 0xbf, 0x62}, "a" + r + r + "b"},
		{"empty", nil, ""},
	} {
		if got := ValidUTF8(string(tc.in)); got != tc.want {
			t.Errorf("%s: ValidUTF8(% x) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
}

// TestValidUTF8Exhaustive checks every 1- to 3-byte input over a set of interesting bytes against
// a direct transcription of the WHATWG decoder's state machine.
func TestValidUTF8Exhaustive(t *testing.T) {
	interesting := []byte{0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf,
		0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff}
	var inputs [][]byte
	for _, a := range interesting {
		inputs = append(inputs, []byte{a})
		for _, b := range interesting {
			inputs = append(inputs, []byte{a, b})
			for _, c := range interesting {
				inputs = append(inputs, []byte{a, b, c}, []byte{a, b, c, 0x80}, []byte{a, b, c, 0xbf})
			}
		}
	}
	for _, in := range inputs {
		got, want := ValidUTF8(string(in)), whatwgDecode(in)
		if got != want {
			t.Fatalf("ValidUTF8(% x) = %q, want %q", in, got, want)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("ValidUTF8(% x) = %q is not valid UTF-8", in, got)
		}
	}
}

// whatwgDecode follows the UTF-8 decoder algorithm of the WHATWG Encoding Standard step by step.
func whatwgDecode(in []byte) string {
	var out strings.Builder
	var cp rune
	needed, seen := 0, 0
	lower, upper := byte(0x80), byte(0xbf)
	for i := 0; i < len(in); i++ {
		b := in[i]
		if needed == 0 {
			switch {
			case b <= 0x7f:
				out.WriteByte(b)
			case b >= 0xc2 && b <= 0xdf:
				needed, cp = 1, rune(b&0x1f)
			case b >= 0xe0 && b <= 0xef:
				if b == 0xe0 {
					lower = 0xa0
				}
				if b == 0xed {
					upper = 0x9f
				}
				needed, cp = 2, rune(b&0xf)
			case b >= 0xf0 && b <= 0xf4:
				if b == 0xf0 {
					lower = 0x90
				}
				if b == 0xf4 {
					upper = 0x8f
				}
				needed, cp = 3, rune(b&0x7)
			default:
				out.WriteRune(utf8.RuneError)
			}
			continue
		}
		if b < lower || b > upper {
			cp, needed, seen, lower, upper = 0, 0, 0, 0x80, 0xbf
			out.WriteRune(utf8.RuneError)
			i-- // process the byte again
			continue
		}
		lower, upper = 0x80, 0xbf
		cp = cp<<6 | rune(b&0x3f)
		if seen++; seen == needed {
			out.WriteRune(cp)
			cp, needed, seen = 0, 0, 0
		}
	}
	if needed != 0 {
		out.WriteRune(utf8.RuneError)
	}
	return out.String()
}
