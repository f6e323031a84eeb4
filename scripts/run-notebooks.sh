#!/usr/bin/env bash
# Executes notebooks headless with the GoNB kernel and fails if any cell fails (a compile error,
# a panic or a non-zero exit), printing that cell's source and error. Usage: scripts/run-notebooks.sh [notebook.ipynb ...] (default: notebooks/*.ipynb).
#
# Notebooks run in their small CPU mode: GOMLX_BACKEND=go (unless set) and BLACKMAMBA_SMALL=1,
# which a notebook reads to shrink its work. The executed copies, with their outputs, are kept in
# .tools/notebooks-out/. Run scripts/setup.sh (make setup) first.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jupyter=/usr/bin/jupyter
out="${root}/.tools/notebooks-out"
timeout="${NOTEBOOK_TIMEOUT:-600}"

if [[ ! -x "${jupyter}" || ! -f "${root}/.tools/jupyter/kernels/gonb/kernel.json" ]]; then
	echo "run-notebooks: Jupyter or the GoNB kernel is missing: run 'make setup' first" >&2
	exit 1
fi
export JUPYTER_DATA_DIR="${root}/.tools/jupyter"
export PATH="${root}/.tools/bin:$(go env GOROOT)/bin:${PATH}"
export GOMLX_BACKEND="${GOMLX_BACKEND:-go}"
export BLACKMAMBA_SMALL=1

if (($# == 0)); then
	set -- "${root}"/notebooks/*.ipynb
fi
mkdir -p "${out}"
passed=0 failed=0
for nb in "$@"; do
	[[ -f "${nb}" ]] || { echo "run-notebooks: ${nb}: no such notebook" >&2; failed=$((failed + 1)); continue; }
	name="$(basename "${nb}" .ipynb)"
	log="${out}/${name}.log"
	start=${SECONDS}
	# --allow-errors: run every cell and keep the outputs, so that the failing cell's own messages
	# (compiler errors, panics) can be shown; notebook_errors.py then decides.
	if ! "${jupyter}" nbconvert --to notebook --execute --allow-errors --ExecutePreprocessor.timeout="${timeout}" \
		--ExecutePreprocessor.kernel_name=gonb --output-dir "${out}" --output "${name}.out.ipynb" \
		"${nb}" >"${log}" 2>&1; then
		echo "FAIL  ${nb} ($((SECONDS - start)) s): the notebook runner failed:"
		grep -v '^[IWE][0-9]\{4\} ' "${log}" | tail -n 40 | sed 's/^/      /'
		failed=$((failed + 1))
	# GoNB reports a cell whose program panicked or exited non-zero as successful: look for it too.
	elif ! /usr/bin/python3 "${root}/scripts/notebook_errors.py" "${out}/${name}.out.ipynb" >"${log}.cells"; then
		echo "FAIL  ${nb} ($((SECONDS - start)) s)"
		sed 's/^/      /' "${log}.cells"
		failed=$((failed + 1))
	else
		echo "ok    ${nb} ($((SECONDS - start)) s)"
		passed=$((passed + 1))
	fi
done
echo "notebooks: ${passed} passed, ${failed} failed"
((failed == 0))
