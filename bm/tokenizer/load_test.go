package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// synthetic builds a small tokenizer.json: every byte is a token whose id is the byte value, plus
// the merges a+b -> "ab" (256) and ab+c -> "abc" (257), and the given added tokens.
func synthetic(tb testing.TB, preTokenizer map[string]any, added []AddedToken) []byte {
	tb.Helper()
	enc := byteLevelEncoding()
	vocab := map[string]int{}
	for b, r := range enc {
		vocab[string(r)] = b
	}
	vocab["ab"], vocab["abc"] = 256, 257
	if preTokenizer == nil {
		preTokenizer = map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true}
	}
	doc := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil,
		"added_tokens":   added,
		"normalizer":     map[string]any{"type": "NFC"},
		"pre_tokenizer":  preTokenizer,
		"post_processor": map[string]any{"type": "ByteLevel"},
		"decoder":        map[string]any{"type": "ByteLevel"},
		"model":          map[string]any{"type": "BPE", "dropout": nil, "vocab": vocab, "merges": []string{"a b", "ab c"}},
	}
	data, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func TestAddedTokenFlags(t *testing.T) {
	added := []AddedToken{
		{ID: 300, Content: "[SW]", SingleWord: true},
		{ID: 301, Content: "[L]", LStrip: true},
		{ID: 302, Content: "[R]", RStrip: true},
		{ID: 303, Content: "é", Normalized: true},
		{ID: 304, Content: "[RAW]", Special: true},
		{ID: 305, Content: "[RAW]+", Special: true},
	}
	tok, err := Parse("synthetic.json", synthetic(t, nil, added))
	if err != nil {
		t.Fatal(err)
	}
	// Ids below 256 are byte values: ' ' = 32, 'a' = 97, ...
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"abc abc", []int{257, 32, 257}},
		{"x [SW] y", []int{'x', ' ', 300, ' ', 'y'}},
		{"[SW]", []int{300}},
		{"x[SW]y", []int{'x', '[', 'S', 'W', ']', 'y'}},       // single_word: not next to word characters
		{"x [SW]y", []int{'x', ' ', '[', 'S', 'W', ']', 'y'}}, // ... on either side
		{"a \t [L]b", []int{'a', 301, 'b'}},                   // lstrip drops the whitespace before
		{"a[R] \n b", []int{'a', 302, 'b'}},                   // rstrip drops the whitespace after
		{"ab e\u0301 [RAW]", []int{256, 32, 303, 32, 304}},    // normalized token matched after NFC
		{"[RAW]+[RAW]", []int{305, 304}},                      // leftmost-longest
		{"[RA[RAW]", []int{'[', 'R', 'A', 304}},               // a failed partial match restarts
	} {
		if got := tok.Encode(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := tok.Decode([]int{'a', 301, 'b', 304}); got != "a[L]b[RAW]" {
		t.Errorf("Decode = %q", got)
	}
	if !tok.IsSpecial(304) || tok.IsSpecial(301) {
		t.Errorf("IsSpecial(304), IsSpecial(301) = %v, %v; want true, false", tok.IsSpecial(304), tok.IsSpecial(301))
	}

	// add_prefix_space adds a space to every stretch between added tokens that lacks one.
	tok, err = Parse("prefix.json", synthetic(t, map[string]any{"type": "ByteLevel", "add_prefix_space": true}, added))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.Encode("abc[RAW]abc"), []int{32, 257, 304, 32, 257}; !slices.Equal(got, want) {
		t.Errorf("add_prefix_space: Encode = %v, want %v", got, want)
	}
	// use_regex false: the whole stretch is one BPE piece.
	tok, err = Parse("noregex.json", synthetic(t, map[string]any{"type": "ByteLevel", "use_regex": false}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.Encode("xab"), []int{'x', 256}; !slices.Equal(got, want) {
		t.Errorf("use_regex false: Encode = %v, want %v", got, want)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	good := string(synthetic(t, nil, nil))
	edit := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("synthetic JSON lacks %q", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	for _, tc := range []struct {
		name, content, want string
	}{
		{"truncated.json", good[:len(good)/2], "invalid JSON"},
		{"garbage.json", "not json at all", "invalid JSON at byte offset"},
		{"wrongtype.json", `{"model": {"type": 3}}`, `field "model.type"`},
		{"nomodel.json", `{"version": "1.0"}`, `no "model" object`},
		{"wordpiece.json", edit(`"type":"BPE"`, `"type":"WordPiece"`), `model.type is "WordPiece"`},
		{"dropout.json", edit(`"dropout":null`, `"dropout":0.1`), "BPE dropout is not supported"},
		{"badmerge.json", edit(`"ab c"`, `"ab zz"`), `model.merges[1]: "zz" is not in model.vocab`},
		{"badmergeform.json", edit(`"ab c"`, `"abc"`), `model.merges: entry 1 ("abc")`},
		{"lowercase.json", edit(`{"type":"NFC"}`, `{"type":"Lowercase"}`), `normalizer.type is "Lowercase"`},
		{"metaspace.json", edit(`"trim_offsets":true,"type":"ByteLevel"`, `"trim_offsets":true,"type":"Metaspace"`), `pre_tokenizer.type is "Metaspace"`},
		{"template.json", edit(`"post_processor":{"type":"ByteLevel"}`, `"post_processor":{"type":"TemplateProcessing"}`), `post_processor.type is "TemplateProcessing"`},
		{"truncation.json", edit(`"truncation":null`, `"truncation":{"max_length":8}`), "truncation is set"},
		{"nobyte.json", edit(`"A":65,`, ``), "no token for byte 0x41"},
	} {
		path := filepath.Join(dir, tc.name)
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if err == nil {
			t.Errorf("%s: Load succeeded, want an error containing %q", tc.name, tc.want)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: error %q should name the file and contain %q", tc.name, msg, tc.want)
		}
	}
	missing := filepath.Join(dir, "missing.json")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing file) error = %v, want one naming %s", err, missing)
	}
}
