// make_docs.mjs writes the golden documents for the tokenizer tests, one JSON object per line:
//   {"name": "...", "text": "..."}            a valid Unicode document
//   {"name": "...", "bytes_b64": "..."}       raw bytes that are not valid UTF-8
// The documents are hand-written excerpts (below) plus ones built by a seeded generator, so the
// output is identical on every run.
//
// Usage: node make_docs.mjs > ../testdata/golden_docs.jsonl

const docs = [];
const add = (name, text) => docs.push({ name, text });
const addBytes = (name, bytes) =>
  docs.push({ name, bytes_b64: Buffer.from(bytes).toString("base64") });

// mulberry32: a small deterministic PRNG.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20240611);
const pick = (arr) => arr[Math.floor(rand() * arr.length)];
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));

// ---------------------------------------------------------------- hand-written excerpts
add("empty", "");
add("one-space", " ");
add("one-newline", "\n");
add("only-tabs", "\t\t\t");
add("prose-short", "The quick brown fox jumps over the lazy dog.");
add(
  "prose-paragraph",
  "When the rain finally stopped, the harbour smelled of salt and diesel. Mara counted the boats " +
    "twice, then a third time, because the numbers never matched the ledger her father kept. " +
    "Seventeen hulls, sixteen names. She wrote the difference in pencil and underlined it.\n\n" +
    "\"You'll catch cold out here,\" said the harbourmaster, who'd been watching from the crane. " +
    "She didn't answer; she'd already decided which boat was the stranger.\n"
);
add(
  "prose-contractions",
  "I'm sure they're here; we've looked, you'd agree, and it's late. " +
    "SHE'S GONE. We'll see. O'Neill's dog isn't 'the' dog. ''quoted'' 'single' rock'n'roll"
);
add(
  "prose-dialogue-crlf",
  "\"Where are you going?\"\r\n\"Out.\"\r\n\"Out where?\"\r\n\r\n\"Just out, Dad.\"\r\n"
);
add(
  "prose-trailing-newlines",
  "A line with two trailing newlines.\n\nAnd a final one with three.\n\n\n"
);
add(
  "technical-english",
  "To rebuild the index, stop the server (systemctl stop indexer), remove /var/lib/indexer/*.db, " +
    "and run `indexer --rebuild --threads=8`. Expect roughly 2.5 GB of I/O per million documents; " +
    "on an NVMe drive this takes 3-4 min. See section 4.2.1 (\"Recovery\") for the -f/--force flag.\n"
);
add(
  "go-code",
  "package main\n\nimport (\n\t\"fmt\"\n\t\"strings\"\n)\n\n// Reverse returns s with its runes in reverse order.\n" +
    "func Reverse(s string) string {\n\tr := []rune(s)\n\tfor i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {\n" +
    "\t\tr[i], r[j] = r[j], r[i]\n\t}\n\treturn string(r)\n}\n\nfunc main() {\n" +
    "\tfmt.Println(Reverse(\"Hello, 世界\"), strings.Repeat(\"=\", 10))\n}\n"
);
add(
  "python-code",
  "import math\n\n\nclass Circle:\n    \"\"\"A circle with a radius.\"\"\"\n\n    def __init__(self, r: float) -> None:\n" +
    "        self.r = r\n\n    def area(self) -> float:\n        return math.pi * self.r ** 2\n\n\n" +
    "if __name__ == \"__main__\":\n    for r in (0.5, 1, 2e3):\n        print(f\"{r:>8} -> {Circle(r).area():.3f}\")\n"
);
add(
  "javascript-code",
  "const debounce = (fn, ms = 250) => {\n  let timer;\n  return (...args) => {\n    clearTimeout(timer);\n" +
    "    timer = setTimeout(() => fn.apply(this, args), ms);\n  };\n};\n\nexport default debounce; // ES2015+\n"
);
add(
  "c-code",
  "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    unsigned long long n = 0xFFFFFFFFULL;\n" +
    "    if (argc > 1 && argv[1][0] != '\\0') {\n        printf(\"%s: %llu\\n\", argv[1], n >> 3);\n    }\n" +
    "    return 0;\n}\n"
);
add(
  "rust-code",
  "fn gcd(mut a: u64, mut b: u64) -> u64 {\n    while b != 0 {\n        (a, b) = (b, a % b);\n    }\n    a\n}\n\n" +
    "#[test]\nfn gcd_works() {\n    assert_eq!(gcd(48, 18), 6);\n}\n"
);
add(
  "sql-code",
  "SELECT u.id, u.name, COUNT(o.id) AS orders\nFROM users u\nLEFT JOIN orders o ON o.user_id = u.id\n" +
    "WHERE u.created_at >= '2023-01-01'\nGROUP BY u.id, u.name\nHAVING COUNT(o.id) > 5\nORDER BY orders DESC;\n"
);
add(
  "shell-code",
  "#!/usr/bin/env bash\nset -euo pipefail\nfor f in \"$@\"; do\n  if [[ -f \"$f\" ]]; then\n" +
    "    wc -l -- \"$f\" | awk '{print $1}'\n  fi\ndone 2>&1 | sort -n | tail -n 3\n"
);
add(
  "html-code",
  "<!DOCTYPE html>\n<html lang=\"en\">\n  <head><meta charset=\"utf-8\"><title>Test &amp; check</title></head>\n" +
    "  <body>\n    <p class=\"note\">Hello&nbsp;world &lt;3</p>\n  </body>\n</html>\n"
);
add(
  "json-yaml",
  "{\"name\": \"widget\", \"version\": \"1.2.3\", \"tags\": [\"a\", \"b\"], \"price\": -12.50, \"ok\": true, \"n\": null}\n" +
    "---\nserver:\n  host: 0.0.0.0\n  port: 8080\n  paths:\n    - /api/v1\n    - /health\n"
);
add(
  "latex",
  "\\begin{equation}\n  \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}\n\\end{equation}\n" +
    "where $\\alpha_i \\geq 0$ and $\\sum_i \\alpha_i = 1$.\n"
);
add(
  "makefile-tabs",
  "CFLAGS ?= -O2 -Wall\n\nall: app\n\napp: main.o util.o\n\t$(CC) $(CFLAGS) -o $@ $^\n\n%.o: %.c\n\t$(CC) $(CFLAGS) -c $<\n\n.PHONY: all clean\n"
);
add(
  "code-deep-indent",
  "def f(x):\n" +
    Array.from({ length: 12 }, (_, i) => " ".repeat(4 * (i + 1)) + `if x > ${i}:\n`).join("") +
    " ".repeat(52) + "return x\n"
);
add(
  "accents-composed",
  "Café, naïve, résumé, São Paulo, Zürich, Ångström, Dvořák, Łódź, señor, façade, coöperate."
);
add(
  "accents-decomposed",
  "Cafe\u0301, nai\u0308ve, re\u0301sume\u0301, Sa\u0303o Paulo, Zu\u0308rich, A\u030Ango\u0308stro\u0308m, Dvor\u030Ca\u0301k."
);
add("nfc-singletons", "Angstrom sign \u212B, ohm sign \u2126, Kelvin sign \u212A, CJK compat \uF900\uF901.");
add("hangul-jamo-decomposed", "\u1112\u1161\u11AB\u1100\u1173\u11AF and \uD55C\uAE00 composed.");
add("ligatures-kept-by-nfc", "ﬁnd the ﬂow; ① ② ③; ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３");
add(
  "emoji",
  "Good morning ☀️! Coffee ☕ and 🥐. Family: 👨‍👩‍👧‍👦, rainbow flag 🏳️‍🌈, thumbs 👍🏽, keycap 1️⃣, flags 🇫🇷🇯🇵."
);
add("emoji-only", "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘");
add("cjk-chinese", "今天天气很好，我们去公园散步吧。机器学习是人工智能的一个分支。");
add("cjk-japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字を使います。コンピューター");
add("korean", "안녕하세요. 오늘은 날씨가 좋습니다. 한국어 문장입니다.");
add("arabic", "مرحبا بالعالم. اللغة العربية تكتب من اليمين إلى اليسار، والأرقام ١٢٣٤٥.");
add("hebrew", "שלום עולם. עברית נכתבת מימין לשמאל.");
add("devanagari", "नमस्ते दुनिया। हिन्दी भाषा देवनागरी लिपि में लिखी जाती है। ०१२३४५६७८९");
add("thai", "สวัสดีครับ ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ");
add("greek-cyrillic", "Καλημέρα κόσμε. Привет, мир! Ёжик в тумане — 1975 г.");
add("mixed-scripts", "Tokyo 東京 Москва Cairo القاهرة Delhi दिल्ली 42 km/h — ok?");
add(
  "numbers",
  "0 1 12 123 1234 12345 123456 1,234,567.89 -3.14159 6.022e23 0x1F 0b1010 007 2024-06-11 " +
    "13:45:07 ½ ¾ ² ³ Ⅻ ٣ ४ 1st 2nd 3rd 100% $19.99 €5 £3 ¥1000"
);
add("long-number", "3141592653589793238462643383279502884197169399375105820974944592307816406286208998628034825342117067");
add(
  "urls",
  "See https://example.com/path/to/page?query=a+b&lang=en#section-2 or http://localhost:8080/api/v1/items/42.json, " +
    "ftp://files.example.org/pub/README.txt, mailto:someone@example.net and www.example.co.uk/a_b-c~d."
);
add(
  "special-tokens",
  "First document.<|endoftext|>Second document.<|endoftext|><|endoftext|>Third.<|padding|><|padding|>"
);
add("special-adjacent-words", "word<|endoftext|>word <|endoftext|> word<|endoftext|>\n<|endoftext|>");
add("special-partial", "<|endoftext| <|endoftext <endoftext|> <|ENDOFTEXT|> <||> <|padding| |> <<|endoftext|>>");
add("special-with-spaces", "    <|endoftext|>    x  <|padding|>  ");
add("special-only", "<|endoftext|>");
// NFC would compose ">" + U+0338 into U+226F, but special tokens are cut out before normalizing.
add("special-then-combining", "x<|endoftext|>\u0338 y<\u0338 =\u0338 <|padding|>\u0301e\u0301<|endoftext|>");
add("unicode-spaces", "a\u00A0b\u2003c\u3000d\u2009e\u202Ff\u205Fg\u1680h\u200Bi\u2028j\u2029k");
add("nel-and-bom", "\uFEFFHello \uFEFFworld\u0085next \u0085 line \u0085\u0085x  \uFEFF\uFEFF end \uFEFF");
add("control-chars", "bell\u0007 null\u0000 escape\u001B[0m tab\tvtab\u000Bff\u000C del\u007F end");
add("apostrophes", "don't DON'T don’t it's it’s '' 's 't 're 've 'm 'll 'd 'S 'T 'RE x's'");
add("punctuation-runs", "Wait... what?!?! ---> <=> ==== ((()))[[]]{{}} ;;; ::: @@@ ### $$$ %%% ^^^ &&& *** !!!");
add("mixed-whitespace", "a \t b\t \tc \n d\n\t\te\r\n \r\nf \u000B g\u000C h\n \n \n");

// ---------------------------------------------------------------- generated documents
// Runs of spaces of every length from 1 to 60, between, before and after words (the added tokens
// cover runs of 2..24 spaces).
for (let n = 1; n <= 60; n++) {
  const sp = " ".repeat(n);
  add(`space-run-${n}`, `a${sp}b${sp}\n${sp}c${sp}`);
}
for (const n of [1, 2, 3, 7, 23, 24, 25, 48, 49, 100]) add(`only-spaces-${n}`, " ".repeat(n));
for (const n of [1, 2, 3, 8, 17]) add(`tab-run-${n}`, `x${"\t".repeat(n)}y${"\t".repeat(n)}`);
for (const n of [1, 2, 3, 5, 9]) add(`newline-run-${n}`, `x${"\n".repeat(n)}y${"\n".repeat(n)}`);
for (const n of [1, 2, 4]) add(`crlf-run-${n}`, `line one${"\r\n".repeat(n)}line two${"\r\n".repeat(n)}`);
for (const n of [2, 5, 30]) add(`space-before-newline-${n}`, `end${" ".repeat(n)}\nnext${" ".repeat(n)}\r\nlast`);

// Long words and runs.
add("long-word-a", "a".repeat(700));
add("long-word-mixed", Array.from({ length: 900 }, () => pick("abcdefghijklmnopqrstuvwxyz")).join(""));
add("long-word-capital", "Pneumonoultramicroscopicsilicovolcanoconiosis".repeat(12));
add("long-digits", Array.from({ length: 500 }, () => pick("0123456789")).join(""));
add("long-punct", Array.from({ length: 400 }, () => pick("!@#$%^&*()-_=+[]{};:,.<>/?|~`")).join(""));
add("long-emoji", Array.from({ length: 120 }, () => pick(["😀", "🚀", "🌍", "👍🏿", "❤️", "🇩🇪"])).join(""));
add("long-cjk", Array.from({ length: 400 }, () => String.fromCodePoint(int(0x4e00, 0x9fa5))).join(""));
add("long-url", "https://example.com/" + Array.from({ length: 60 }, (_, i) => `seg${i}`).join("/") + "?x=" + "ab".repeat(100));

// Random documents assembled from pieces of many kinds.
const words = (
  "the of and to in is was for on that with as by at from it he she they we you this be are or an " +
  "model token layer expert router state scan time memory input output vector matrix train loss " +
  "Alpha Beta Gamma Delta NASA IBM iPhone JavaScript snake_case camelCase kebab-case"
).split(" ");
const accented = ["é", "e\u0301", "ü", "u\u0308", "ñ", "n\u0303", "Å", "A\u030A", "ç", "c\u0327", "ő", "o\u030B"];
const scripts = ["東京", "日本語", "한국", "Москва", "Ελλάδα", "مرحبا", "שלום", "नमस्ते", "ไทย", "ქართული", "Հայերեն"];
const emoji = ["🙂", "🎉", "👩‍💻", "🧑🏾‍🚀", "🏳️‍⚧️", "✨", "🐍", "🇺🇳", "☃️", "⌚"];
const punct = [".", ",", ";", ":", "!", "?", "...", "—", "–", "-", "(", ")", "\"", "'", "«", "»", "“", "”", "/", "\\", "#", "@", "&"];
const specials = ["<|endoftext|>", "<|padding|>"];
const spaces = [" ", " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00A0", "\u3000", "      "];
const numbers = () => pick([String(int(0, 9)), String(int(10, 9999)), `${int(0, 999)}.${int(0, 99)}`, `${int(1, 12)}/${int(1, 28)}/${int(1900, 2099)}`, `-${int(1, 500)}`, `${int(1, 9)}e${int(-9, 9)}`]);
const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL"];
const makePiece = () => {
  const r = rand();
  if (r < 0.40) return pick(words);
  if (r < 0.47) return pick(words) + pick(accented) + pick(words);
  if (r < 0.53) return pick(scripts);
  if (r < 0.58) return pick(emoji);
  if (r < 0.68) return pick(punct);
  if (r < 0.76) return numbers();
  if (r < 0.80) return pick(words) + pick(contractions);
  if (r < 0.82) return pick(specials);
  if (r < 0.84) return " ".repeat(int(2, 40));
  return pick(spaces);
};
for (let d = 0; d < 90; d++) {
  const n = int(1, 120);
  let s = "";
  for (let i = 0; i < n; i++) {
    s += makePiece();
    if (rand() < 0.6) s += pick(spaces);
  }
  add(`random-mix-${d}`, s);
}

// Random strings of code points drawn from many blocks (letters, marks, numbers, symbols,
// whitespace, format characters), to exercise the pre-tokenizer's character classes and NFC.
const ranges = [
  [0x20, 0x7e], [0x09, 0x0d], [0xa0, 0x17f], [0x300, 0x36f], [0x370, 0x3ff], [0x400, 0x4ff],
  [0x590, 0x5ff], [0x600, 0x6ff], [0x900, 0x97f], [0xe00, 0xe7f], [0x1100, 0x11ff], [0x2000, 0x206f],
  [0x2070, 0x209f], [0x2150, 0x218f], [0x2190, 0x21ff], [0x3000, 0x303f], [0x3040, 0x30ff],
  [0x4e00, 0x9fa5], [0xac00, 0xd7a3], [0xff00, 0xffef], [0x1f300, 0x1f64f], [0x1d400, 0x1d4ff],
];
const isAssigned = (cp) => /\p{Assigned}/u.test(String.fromCodePoint(cp)) && !/\p{Cs}/u.test(String.fromCodePoint(cp));
for (let d = 0; d < 30; d++) {
  const n = int(1, 200);
  let s = "";
  while ([...s].length < n) {
    const [lo, hi] = pick(ranges);
    const cp = int(lo, hi);
    if (isAssigned(cp)) s += String.fromCodePoint(cp);
  }
  add(`random-codepoints-${d}`, s);
}

// Invalid UTF-8: the reference sees these bytes decoded with U+FFFD replacement.
const enc = (s) => [...Buffer.from(s, "utf8")];
addBytes("invalid-lone-continuation", [...enc("abc"), 0x80, ...enc("def"), 0xbf, 0xbf]);
addBytes("invalid-truncated-3byte", [...enc("x "), 0xe2, 0x82, ...enc(" y"), 0xe2]);
addBytes("invalid-truncated-4byte", [0xf0, 0x9f, 0x98, ...enc("A"), 0xf0, 0x9f]);
addBytes("invalid-overlong", [0xc0, 0xaf, 0xe0, 0x80, 0xaf, ...enc(" slash")]);
addBytes("invalid-surrogates", [...enc("hi "), 0xed, 0xa0, 0x80, 0xed, 0xbf, 0xbf, ...enc(" there")]);
addBytes("invalid-high-bytes", [0xff, 0xfe, 0xfd, ...enc("text"), 0xf5, 0xf8, 0x88, 0x80, 0x80, 0x80]);
addBytes("invalid-above-max", [0xf4, 0x90, 0x80, 0x80, ...enc(" ok "), 0xf4, 0x8f, 0xbf, 0xbf]);
addBytes("invalid-in-special", [...enc("<|endof"), 0x80, ...enc("text|> <|endoftext|>"), 0xc3]);
addBytes("invalid-latin1-text", [...enc("caf"), 0xe9, ...enc(" na"), 0xef, ...enc("ve r"), 0xe9, ...enc("sum"), 0xe9]);
{
  const b = [];
  for (let i = 0; i < 300; i++) b.push(rand() < 0.7 ? int(0x20, 0x7e) : int(0x80, 0xff));
  addBytes("invalid-random-bytes", b);
}

for (const d of docs) process.stdout.write(JSON.stringify(d) + "\n");
process.stderr.write(`${docs.length} documents\n`);
