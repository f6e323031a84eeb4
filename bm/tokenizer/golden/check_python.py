"""Checks the golden token ids against the Hugging Face tokenizers library for Python (Rust core).

The golden ids are produced by the JavaScript port (make_ids.mjs); this script confirms that the
Rust implementation, which the released models were trained with, gives the same ids. It needs only
the Python package "tokenizers".

Usage: python3 check_python.py TOKENIZER_JSON TESTDATA_DIR
Exit status 0 when every document matches, 1 otherwise.
"""

import base64
import json
import sys

from tokenizers import Tokenizer


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    tok = Tokenizer.from_file(sys.argv[1])
    docs_path = f"{sys.argv[2]}/golden_docs.jsonl"
    ids_path = f"{sys.argv[2]}/golden_ids.jsonl"
    with open(docs_path, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    with open(ids_path, encoding="utf-8") as f:
        refs = [json.loads(line) for line in f if line.strip()]
    if len(docs) != len(refs):
        print(f"{docs_path}: {len(docs)} documents but {ids_path}: {len(refs)} id lists", file=sys.stderr)
        return 1
    matched_docs = matched_tokens = total_tokens = 0
    for doc, ref in zip(docs, refs):
        if doc["name"] != ref["name"]:
            print(f"line mismatch: {doc['name']} vs {ref['name']}", file=sys.stderr)
            return 1
        if "bytes_b64" in doc:
            # Python's "replace" error handler substitutes maximal invalid subsequences, like Node.
            text = base64.b64decode(doc["bytes_b64"]).decode("utf-8", errors="replace")
        else:
            text = doc["text"]
        ids = tok.encode(text, add_special_tokens=False).ids
        total_tokens += len(ref["ids"])
        if ids == ref["ids"]:
            matched_docs += 1
            matched_tokens += len(ids)
            continue
        i = next((k for k, (a, b) in enumerate(zip(ids, ref["ids"])) if a != b), min(len(ids), len(ref["ids"])))
        print(
            f"{doc['name']}: first difference at token {i}: python {ids[max(0, i - 3):i + 4]} "
            f"golden {ref['ids'][max(0, i - 3):i + 4]}",
            file=sys.stderr,
        )
    print(f"python tokenizers: {matched_docs}/{len(docs)} documents, {matched_tokens}/{total_tokens} tokens identical")
    return 0 if matched_docs == len(docs) else 1


if __name__ == "__main__":
    sys.exit(main())
