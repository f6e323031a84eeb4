// make_ids.mjs encodes the golden documents with the reference tokenizer, the pure-JavaScript
// port of Hugging Face tokenizers (npm package @huggingface/tokenizers, version 0.2.0), and writes
// one line per document: {"name": "...", "ids": [...]}.
//
// Usage: node make_ids.mjs TOKENIZER_JSON DOCS_JSONL > IDS_JSONL
//
// Documents given as "bytes_b64" are decoded to a string the way Node decodes UTF-8 (each maximal
// invalid subsequence becomes U+FFFD) before encoding.
//
// One correction is applied to the reference: its ByteLevel pre-tokenizer hard-codes the GPT-2
// pattern as a JavaScript regular expression, where \s differs from the Oniguruma engine used by
// the Rust library (JavaScript counts U+FEFF as a space and not U+0085; Oniguruma, like Unicode's
// White_Space property, the opposite). The pattern is replaced by the same pattern with \s written
// as \p{White_Space}, so the ids are those of the Rust library. The script checks that this only
// changes documents containing U+0085 or U+FEFF, and that decoding every document's ids gives back
// its text with NFC applied between the special tokens.
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [tokenizerPath, docsPath] = process.argv.slice(2);
if (!tokenizerPath || !docsPath) {
  process.stderr.write("usage: node make_ids.mjs TOKENIZER_JSON DOCS_JSONL > IDS_JSONL\n");
  process.exit(2);
}
const tok = new Tokenizer(JSON.parse(readFileSync(tokenizerPath, "utf8")), {});
const jsPattern = tok.pre_tokenizer.pattern;
const whiteSpacePattern =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
if (String(jsPattern) !== String(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu)) {
  throw new Error(`unexpected ByteLevel pattern ${jsPattern}; review the correction`);
}

const encode = (text, pattern) => {
  tok.pre_tokenizer.pattern = pattern;
  return text.length === 0 ? [] : tok.encode(text).ids;
};

// nfcOutsideSpecials applies NFC to the text between special tokens, which are matched on the
// raw text before normalization.
const nfcOutsideSpecials = (text) =>
  text
    .split(/(<\|endoftext\|>|<\|padding\|>)/)
    .map((part, i) => (i % 2 === 1 ? part : part.normalize("NFC")))
    .join("");

let tokens = 0;
let corrected = 0;
const lines = readFileSync(docsPath, "utf8").split("\n").filter((l) => l.length > 0);
for (const line of lines) {
  const doc = JSON.parse(line);
  const text = doc.bytes_b64 !== undefined ? Buffer.from(doc.bytes_b64, "base64").toString("utf8") : doc.text;
  const ids = encode(text, whiteSpacePattern);
  const jsIds = encode(text, jsPattern);
  if (JSON.stringify(ids) !== JSON.stringify(jsIds)) {
    if (!/[\u0085\uFEFF]/.test(text)) throw new Error(`${doc.name}: ids differ without U+0085/U+FEFF`);
    corrected++;
  }
  if (ids.length > 0) {
    const back = tok.decode(ids, { clean_up_tokenization_spaces: false });
    if (back !== nfcOutsideSpecials(text)) throw new Error(`${doc.name}: decode(encode(text)) != NFC(text)`);
  }
  tokens += ids.length;
  process.stdout.write(JSON.stringify({ name: doc.name, ids }) + "\n");
}
process.stderr.write(
  `${lines.length} documents, ${tokens} tokens; ${corrected} documents changed by the White_Space correction\n`
);
