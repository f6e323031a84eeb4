#!/usr/bin/env bash
# run.sh of the GPU bundle (make gpu-bundle): sets up the environment for GoMLX on XLA and runs a
# program of the bundle, or any command.
#
#   ./run.sh blackmamba backends            # what was found, chosen, and a self-check
#   ./run.sh bm.test -test.run TestX -test.v
#   ./run.sh env | grep -E 'GOMLX|XLA'
#
# The backend is discovered by "blackmamba backends -env" (a CUDA PJRT plugin from a JAX
# installation or go-xla's folder; see the xla package) unless GOMLX_BACKEND is already set, and
# exported as GOMLX_BACKEND and BLACKMAMBA_TEST_BACKEND so that test binaries use the same
# plugin. Nothing is ever downloaded.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOMLX_NO_AUTO_INSTALL=1
export NCCL_NVLS_ENABLE=0 # NVLink multicast (NVLS) off for NCCL collectives
export GOPJRT_CUDA_CHECKS="${GOPJRT_CUDA_CHECKS:-0}"
if [[ -z "${GOMLX_BACKEND:-}" ]]; then
	if ! assignments="$("${here}/blackmamba" backends -env)"; then
		echo "run.sh: choosing a backend failed" >&2
		exit 1
	fi
	eval "${assignments}"
	echo "run.sh: ${assignments##*# }" >&2
else
	# An explicit choice still gets XLA_FLAGS and the other settings for its plugin.
	eval "$("${here}/blackmamba" backends -env -backend "${GOMLX_BACKEND}")"
fi

# The bm package's test binary picks its backend from BLACKMAMBA_TEST_BACKEND.
export BLACKMAMBA_TEST_BACKEND="${BLACKMAMBA_TEST_BACKEND:-${GOMLX_BACKEND}}"

if (($# == 0)); then
	echo "usage: $0 <program of the bundle or command> [args...]" >&2
	exit 2
fi
prog="$1"
shift
if [[ -x "${here}/${prog}" && "${prog}" != */* ]]; then
	exec "${here}/${prog}" "$@"
fi
exec "${prog}" "$@"
