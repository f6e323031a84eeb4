package data

import (
	"html"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Text cleaners: each turns one markup format into plain UTF-8 text with paragraphs separated by a
// blank line. They aim at readable prose for language modelling, not at a faithful rendering.

var (
	reHTMLDrop    = regexp.MustCompile(`(?is)<(script|style|head|nav|footer|noscript|svg|button|form)\b.*?</(script|style|head|nav|footer|noscript|svg|button|form)\s*>|<!--.*?-->|<!\[CDATA\[.*?\]\]>|<!DOCTYPE[^>]*>`)
	reHTMLBlock   = regexp.MustCompile(`(?i)</?(p|div|br|h[1-6]|li|ul|ol|dl|dt|dd|tr|table|pre|blockquote|section|article|hr|header|main|aside|details|summary|figure|figcaption|caption|title)\b[^>]*>`)
	reHTMLTag     = regexp.MustCompile(`(?s)<[^>]*>`)
	reSpaces      = regexp.MustCompile(`[ \t\f\v\r\x{a0}]+`)
	reBlankLines  = regexp.MustCompile(`\n([ \t]*\n)+`)
	reOSISNote    = regexp.MustCompile(`(?s)<note\b.*?</note>`)
	reOSISBlock   = regexp.MustCompile(`(?i)</?(title|p|lb|lg|l|div|chapter)\b[^>]*>`)
	reBase64Line  = regexp.MustCompile(`^[A-Za-z0-9+/=]{60,}$`)
	rePODInline   = regexp.MustCompile(`[A-Z]<<+\s|[BICFSXZEL]<`)
	reRoffEscape  = regexp.MustCompile(`\\(f(\[[^\]]*\]|\(..|.)|\((..)|\[([^\]]*)\]|\*(\(..|\[[^\]]*\]|.)|s[-+]?\d|[-e&|^ 0~%c:/,!)]|.)`)
	reRoffComment = regexp.MustCompile(`\\".*$`)
)

// normalizeSpace collapses runs of spaces, trims every line and keeps at most one blank line
// between paragraphs. Invalid UTF-8 is replaced.
func normalizeSpace(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = reSpaces.ReplaceAllString(s, " ")
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	s = strings.Join(lines, "\n")
	s = reBlankLines.ReplaceAllString(s, "\n\n")
	return strings.TrimSpace(s)
}

// tidyText normalizes plain text: line ends, invalid UTF-8, trailing spaces and runs of blank
// lines; indentation is kept.
func tidyText(s string) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\r\n", "\n"), "\uFFFD")
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t\r")
	}
	s = strings.Join(lines, "\n")
	s = reBlankLines.ReplaceAllString(s, "\n\n")
	return strings.TrimSpace(s)
}

// HTMLToText removes scripts, styles, navigation and comments, turns block elements into line
// breaks, drops all other tags and decodes entities. Text inside <pre> keeps its indentation.
func HTMLToText(s string) string {
	s = reHTMLDrop.ReplaceAllString(s, " ")
	s = reHTMLBlock.ReplaceAllString(s, "\n")
	s = reHTMLTag.ReplaceAllString(s, "")
	s = html.UnescapeString(s)
	return normalizeSpace(s)
}

// OSISToText turns OSIS XML (SWORD Bible modules) into text: notes are dropped, verses are joined
// by spaces, titles and paragraphs start new lines.
func OSISToText(s string) string {
	s = reOSISNote.ReplaceAllString(s, "")
	s = reOSISBlock.ReplaceAllString(s, "\n")
	s = reHTMLTag.ReplaceAllString(s, " ")
	s = html.UnescapeString(s)
	return normalizeSpace(s)
}

// roffText resolves the inline escapes of one roff text line.
func roffText(s string) string {
	s = reRoffComment.ReplaceAllString(s, "")
	return reRoffEscape.ReplaceAllStringFunc(s, func(e string) string {
		switch {
		case strings.HasPrefix(e, `\f`), strings.HasPrefix(e, `\s`), strings.HasPrefix(e, `\*`):
			return ""
		case e == `\-`:
			return "-"
		case e == `\e`:
			return `\`
		case e == `\ `, e == `\~`, e == `\0`:
			return " "
		case e == `\(em`, e == `\[em]`:
			return "—"
		case e == `\(en`, e == `\[en]`:
			return "–"
		case e == `\(aq`, e == `\[aq]`:
			return "'"
		case e == `\(dq`, e == `\[dq]`, e == `\(lq`, e == `\(rq`, e == `\[lq]`, e == `\[rq]`:
			return `"`
		case e == `\(bu`, e == `\[bu]`:
			return "•"
		case e == `\(co`, e == `\[co]`:
			return "©"
		case e == `\(ga`:
			return "`"
		case e == `\(ti`, e == `\[ti]`:
			return "~"
		case e == `\(ha`, e == `\[ha]`:
			return "^"
		case e == `\(rs`, e == `\[rs]`:
			return `\`
		case e == `\(mu`:
			return "×"
		case e == `\(>=`:
			return "≥"
		case e == `\(<=`:
			return "≤"
		}
		return ""
	})
}

// roffArgs splits a macro line's arguments, honouring double quotes.
func roffArgs(s string) []string {
	var out []string
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out
		}
		if s[0] == '"' {
			end := strings.Index(s[1:], `"`)
			if end < 0 {
				return append(out, s[1:])
			}
			out = append(out, s[1:1+end])
			s = s[2+end:]
			continue
		}
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			return append(out, s)
		}
		out = append(out, s[:end])
		s = s[end:]
	}
}

// ManToText renders a man page written in roff with the man macros as plain text: headings, font
// macros and inline escapes are resolved; comments, layout requests and tables' control lines are
// dropped. A page that only sources another (".so") gives "".
func ManToText(src string) string {
	src = strings.ReplaceAll(src, "\\\n", "") // continuation lines
	var b strings.Builder
	for _, line := range strings.Split(src, "\n") {
		if line == "" {
			b.WriteString("\n")
			continue
		}
		if line[0] != '.' && line[0] != '\'' {
			b.WriteString(roffText(line))
			b.WriteString("\n")
			continue
		}
		fields := strings.SplitN(strings.TrimSpace(line[1:]), " ", 2)
		macro := fields[0]
		rest := ""
		if len(fields) > 1 {
			rest = fields[1]
		}
		args := roffArgs(rest)
		switch macro {
		case "so":
			return ""
		case "SH", "SS":
			b.WriteString("\n")
			b.WriteString(roffText(strings.Join(args, " ")))
			b.WriteString("\n")
		case "B", "I", "SM", "SB":
			b.WriteString(roffText(strings.Join(args, " ")))
			b.WriteString("\n")
		case "BI", "IB", "BR", "RB", "IR", "RI":
			b.WriteString(roffText(strings.Join(args, "")))
			b.WriteString("\n")
		case "PP", "P", "LP", "TP", "IP", "HP", "sp", "br":
			b.WriteString("\n")
			if macro == "IP" && len(args) > 0 {
				b.WriteString(roffText(args[0]))
				b.WriteString(" ")
			}
		case "UR", "MT":
			if len(args) > 0 {
				b.WriteString(args[0])
				b.WriteString("\n")
			}
		}
	}
	return normalizeSpace(b.String())
}

// PODToText renders Perl POD as text: headings and items keep their text, other commands are
// dropped, and formatting codes (B<>, I<>, C<>, L<>, E<>, ...) are reduced to their text.
func PODToText(src string) string {
	var b strings.Builder
	inPod := !strings.Contains(src, "\n=") || strings.HasPrefix(src, "=")
	skip := false // inside =begin/=for blocks for other formatters
	for _, para := range strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n\n") {
		p := strings.TrimLeft(para, "\n")
		if strings.HasPrefix(p, "=") {
			cmd, rest, _ := strings.Cut(p, " ")
			cmd = strings.TrimSpace(strings.SplitN(cmd, "\n", 2)[0])
			switch cmd {
			case "=pod", "=encoding":
				inPod = true
			case "=cut":
				inPod = false
			case "=begin":
				skip = true
			case "=end":
				skip = false
			case "=head1", "=head2", "=head3", "=head4", "=item":
				inPod = true
				if !skip && strings.TrimSpace(rest) != "*" {
					b.WriteString(podInline(rest))
					b.WriteString("\n\n")
				}
			}
			continue
		}
		if !inPod || skip {
			continue
		}
		b.WriteString(podInline(p))
		b.WriteString("\n\n")
	}
	return normalizeSpace(b.String())
}

// podInline resolves POD formatting codes, including the multi-bracket form C<< ... >>.
func podInline(s string) string {
	var b strings.Builder
	for {
		loc := rePODInline.FindStringIndex(s)
		if loc == nil {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:loc[0]])
		code := s[loc[0]]
		open := strings.Count(s[loc[0]:loc[1]], "<")
		rest := s[loc[1]:]
		var inner string
		if open > 1 {
			closeTok := " " + strings.Repeat(">", open)
			end := strings.Index(rest, closeTok)
			if end < 0 {
				end = len(rest)
				inner, s = rest, ""
			} else {
				inner, s = rest[:end], rest[end+len(closeTok):]
			}
		} else {
			depth, end := 1, -1
			for i := 0; i < len(rest); i++ {
				if rest[i] == '<' {
					depth++
				} else if rest[i] == '>' {
					depth--
					if depth == 0 {
						end = i
						break
					}
				}
			}
			if end < 0 {
				inner, s = rest, ""
			} else {
				inner, s = rest[:end], rest[end+1:]
			}
		}
		switch code {
		case 'E':
			b.WriteString(podEscape(inner))
		case 'X', 'Z':
		case 'L':
			text, target, found := strings.Cut(inner, "|")
			if !found {
				text = target
				if text == "" {
					text = inner
				}
			}
			b.WriteString(podInline(strings.Trim(text, `"`)))
		default:
			b.WriteString(podInline(inner))
		}
	}
}

func podEscape(name string) string {
	switch name {
	case "lt":
		return "<"
	case "gt":
		return ">"
	case "verbar":
		return "|"
	case "sol":
		return "/"
	}
	if u := html.UnescapeString("&" + name + ";"); u != "&"+name+";" {
		return u
	}
	return ""
}

// MailToText keeps the From, To, Subject and Date headers and the body of an RFC 822 message;
// HTML bodies are converted to text and lines that look like base64 attachment data are dropped.
func MailToText(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	head, body, found := strings.Cut(s, "\n\n")
	if !found {
		head, body = "", s
	}
	var b strings.Builder
	for _, line := range strings.Split(head, "\n") {
		for _, h := range []string{"From:", "To:", "Subject:", "Date:"} {
			if len(line) >= len(h) && strings.EqualFold(line[:len(h)], h) {
				b.WriteString(line)
				b.WriteString("\n")
			}
		}
	}
	b.WriteString("\n")
	lower := strings.ToLower(body)
	if strings.Contains(lower, "<html") || strings.Contains(lower, "<body") {
		body = HTMLToText(body)
	}
	for _, line := range strings.Split(body, "\n") {
		if reBase64Line.MatchString(strings.TrimSpace(line)) {
			continue
		}
		b.WriteString(line)
		b.WriteString("\n")
	}
	return normalizeSpace(b.String())
}

// splitDocument cuts a long text into pieces of at most max bytes at paragraph (else line, else
// rune) boundaries, so that documents stay a manageable unit for de-duplication and held-out
// selection.
func splitDocument(s string, max int) []string {
	var out []string
	for len(s) > max {
		cut := strings.LastIndex(s[:max], "\n\n")
		if cut < max/2 {
			cut = strings.LastIndex(s[:max], "\n")
		}
		if cut < max/2 {
			cut = max
			for cut > 0 && !utf8.RuneStart(s[cut]) {
				cut--
			}
		}
		out = append(out, strings.TrimSpace(s[:cut]))
		s = strings.TrimSpace(s[cut:])
	}
	if s != "" {
		out = append(out, s)
	}
	return out
}
