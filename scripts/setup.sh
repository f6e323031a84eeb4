#!/usr/bin/env bash
# Installs what the notebooks need, idempotently:
#   - Jupyter's headless runner from Debian (jupyter-nbconvert, jupyter-client, python3-nbclient);
#   - GoNB and goimports, at the versions pinned by the tool directives of go.mod, into .tools/bin;
#   - the GoNB kernel, both into .tools/jupyter (used by scripts/run-notebooks.sh) and into the
#     user's own Jupyter data folder (for interactive use).
# Each step is skipped when its result is already in place, so a second run takes a second or two.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${root}/.tools"
bin="${tools}/bin"
jupyter=/usr/bin/jupyter

log() { echo "setup: $*" >&2; }

# --- Jupyter from Debian -------------------------------------------------------------------
have_jupyter() {
	[[ -x "${jupyter}" ]] && "${jupyter}" nbconvert --version >/dev/null 2>&1 &&
		/usr/bin/python3 -c 'import nbclient, jupyter_client' >/dev/null 2>&1
}
if ! have_jupyter; then
	sudo=()
	if [[ "$(id -u)" != 0 ]]; then
		if command -v sudo >/dev/null; then
			sudo=(sudo)
		else
			log "need root (or sudo) to install jupyter-nbconvert, jupyter-client and python3-nbclient"
			exit 1
		fi
	fi
	pkgs=(jupyter-nbconvert jupyter-client python3-nbclient)
	export DEBIAN_FRONTEND=noninteractive
	log "installing ${pkgs[*]} with apt-get"
	if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null; then
		log "apt-get install failed: refreshing the package lists and trying again"
		"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
		"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
	fi
	have_jupyter || { log "${jupyter} nbconvert still not usable after the install"; exit 1; }
fi

# --- GoNB and goimports (versions from go.mod's tool directives) ---------------------------
cd "${root}"
if [[ ! -x "${bin}/gonb" || ! -x "${bin}/goimports" || go.mod -nt "${bin}/gonb" ]]; then
	log "building GoNB and goimports into ${bin}"
	mkdir -p "${bin}"
	GOBIN="${bin}" go install tool
	touch "${bin}/gonb" "${bin}/goimports"
fi

# --- GoNB kernel ---------------------------------------------------------------------------
# GoNB writes kernel.json pointing at the binary that installed it (or at a copy it keeps next
# to kernel.json when the binary lives under /tmp). It is reinstalled when that binary is missing
# or older than ours.
install_kernel() { # $1: Jupyter data folder ("" = the user's default)
	local dir="$1" data="${1:-${JUPYTER_DATA_DIR:-${HOME}/.local/share/jupyter}}"
	local spec="${data}/kernels/gonb/kernel.json" target=""
	if [[ -f "${spec}" ]]; then
		target="$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["argv"][0])' "${spec}" 2>/dev/null || true)"
	fi
	if [[ -n "${target}" && -x "${target}" && ! "${bin}/gonb" -nt "${target}" ]]; then
		return
	fi
	log "installing the GoNB kernel into ${data}"
	if [[ -n "${dir}" ]]; then
		JUPYTER_DATA_DIR="${dir}" PATH="${bin}:${PATH}" "${bin}/gonb" --install --force_deps --logtostderr=false >/dev/null 2>&1 ||
			JUPYTER_DATA_DIR="${dir}" PATH="${bin}:${PATH}" "${bin}/gonb" --install --force_deps
	else
		PATH="${bin}:${PATH}" "${bin}/gonb" --install --force_deps --logtostderr=false >/dev/null 2>&1 ||
			PATH="${bin}:${PATH}" "${bin}/gonb" --install --force_deps
	fi
}
install_kernel "${tools}/jupyter"
install_kernel ""
log "ok (jupyter: ${jupyter}, gonb: ${bin}/gonb)"
