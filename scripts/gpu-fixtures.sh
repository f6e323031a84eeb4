#!/usr/bin/env bash
# Makes the test fixtures that need PyTorch or the Python tokenizers package, on a machine that
# has them (the GPU machine has both): the small BlackMamba checkpoint in the released format
# with its reference logits, and the cross-check of the tokenizer's golden ids.
#
#   scripts/gpu-fixtures.sh OUT_DIR    (run from the repository root; needs data/tokenizer)
set -uo pipefail
out="$1"
mkdir -p "$out/fixture"
python3 -c 'import torch, tokenizers; print("torch", torch.__version__, "tokenizers", tokenizers.__version__)'
python3 bm/weights/fixture/make_fixture.py --out "$out/fixture"
python3 bm/tokenizer/golden/check_python.py data/tokenizer/20B_tokenizer.json bm/tokenizer/testdata
