package tokenizer

import (
	"slices"
	"strings"
	"testing"
)

func TestPreTokenize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"Hello world", []string{"Hello", " world"}},
		{"it's they'll we've I'm she'd you're can't", []string{"it", "'s", " they", "'ll", " we", "'ve", " I", "'m", " she", "'d", " you", "'re", " can", "'t"}},
		{"IT'S 'sx ''s", []string{"IT", "'", "S", " '", "sx", " ''", "s"}},
		{"a  b", []string{"a", " ", " b"}},
		{"a   \nb", []string{"a", "   ", "\n", "b"}},
		{"a\n\n b", []string{"a", "\n\n", " b"}},
		{"x  ", []string{"x", "  "}},
		{"   ", []string{"   "}},
		{"\tx", []string{"\t", "x"}},
		{" 123 4.5", []string{" 123", " 4", ".", "5"}},
		{"abc123def", []string{"abc", "123", "def"}},
		{" !!! ?", []string{" !!!", " ?"}},
		{"café 日本", []string{"café", " 日本"}},
		{"a\u00a0b", []string{"a", "\u00a0", "b"}},       // NBSP is White_Space
		{"a \u0085b", []string{"a", " ", "\u0085", "b"}}, // U+0085 is White_Space (Oniguruma)
		{" \ufeffHi", []string{" \ufeff", "Hi"}},         // U+FEFF is not
		{"Ⅻ½²", []string{"Ⅻ½²"}},                         // Nl, No are \p{N}
		{"e\u0301", []string{"e", "\u0301"}},             // a combining mark is not \p{L}
		{"👍🏽!", []string{"👍🏽!"}},                         // symbols and punctuation form one run
		{"x\r\ny", []string{"x", "\r", "\n", "y"}},       // the run minus its last character, then that one
	} {
		var got []string
		preTokenize(tc.in, func(p string) { got = append(got, p) })
		if !slices.Equal(got, tc.want) {
			t.Errorf("preTokenize(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Join(got, "") != tc.in {
			t.Errorf("preTokenize(%q) pieces do not cover the input", tc.in)
		}
	}
}
