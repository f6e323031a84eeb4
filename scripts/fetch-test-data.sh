#!/usr/bin/env bash
# Fetches what the tests need before they run (make test-data, a step of make test): the
# tokenizer and the tiny data sample, into $BLACKMAMBA_DATA (default: data/ at the repository
# root). Each step keeps what is already there, so running it again is quick.
#
# Steps to add here as their commands land:
#   "${bin}" data tokenizer        # the GPT-NeoX-20B tokenizer, verified by checksum
#   "${bin}" data build -tiny      # the small corpus sample the tests read
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BLACKMAMBA_DATA="${BLACKMAMBA_DATA:-${root}/data}"
mkdir -p "${BLACKMAMBA_DATA}"
echo "fetch-test-data: no steps yet; ${BLACKMAMBA_DATA} left as it is" >&2
