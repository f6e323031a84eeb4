#!/usr/bin/env bash
# Data-parallel training on the GPUs of one host, from the bundle (make gpu-bundle, plus the test
# binary of experiments/train as train.test when available) and a corpus sample
# (data/corpus-12m). Run from the repository root; logs, JSON and metrics go under OUT (default
# ./gpu-out). Each step has its own time limit so a slow step cannot take the others down; each
# phase stays under about nine minutes on two H200s.
#
#   scripts/gpu-multi.sh BUNDLE_DIR test    the data-parallel test of experiments/train (train.test)
#   scripts/gpu-multi.sh BUNDLE_DIR small   the small preset's train step (bf16, global batch
#                                           SMALL_BATCH x SMALL_SEQ, default 16 x 2048) on 1 and 2
#                                           GPUs: tokens/s, peak memory per GPU
#   scripts/gpu-multi.sh BUNDLE_DIR loss    20 steps of `blackmamba train` on 1 and 2 GPUs (same
#                                           seed and global batch), metrics and their comparison
#   scripts/gpu-multi.sh BUNDLE_DIR [dp]    test, small and loss (about 8 minutes)
#   scripts/gpu-multi.sh BUNDLE_DIR experts the data-parallel tests, then the small step on DEVICES
#                                           GPUs with the experts replicated and split over them
#                                           (SMALL_BATCH x SMALL_SEQ, here default 32 x 512)
#   scripts/gpu-multi.sh BUNDLE_DIR 1.5b    the 1.5b train step (bf16, global batch BIG_BATCH x
#                                           2048, default 4) on 1 and 2 GPUs (SHARD_EXPERTS=1:
#                                           the experts split over the GPUs)
#
# Environment: DEVICES (default 2), CORPUS (default data/corpus-12m), LOSS_CONFIG (default tiny),
# LOSS_BATCH (8), LOSS_SEQ (256), LOSS_STEPS (20), SMALL_BATCH (16), SMALL_SEQ (2048), COUNTS (the
# device counts to run instead of 1 and DEVICES, e.g. "2"), and the step time limits TEST_LIMIT
# (90 s), LOSS_LIMIT (60 s per run), SMALL_LIMIT (170 s per run), BIG_LIMIT (270 s per run; the
# 1.5b step at 4 x 2048 compiled in 278 s on one H200), and ALIAS (the steps' -alias: auto, the
# default, updates the variables in place on one device only; on for several devices too).
set -uo pipefail
bundle="$(cd "$1" && pwd)"
phase="${2:-dp}"
out="${OUT:-$PWD/gpu-out}"
corpus="${CORPUS:-data/corpus-12m}"
devices="${DEVICES:-2}"
work="${WORKDIR:-/tmp/blackmamba-multi}"
mkdir -p "$out"
run="$bundle/run.sh"
alias=(-alias "${ALIAS:-auto}") # every step's in-place update of its variables
counts=(1) # device counts to run: 1 and DEVICES, or the list in COUNTS (e.g. "2")
((devices > 1)) && counts+=("$devices")
[[ -n "${COUNTS:-}" ]] && read -r -a counts <<<"$COUNTS"
# shellcheck source=gpu-step.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu-step.sh"
export NCCL_NVLS_ENABLE=0 # NVLink multicast (NVLS) off for NCCL collectives
export BLACKMAMBA_GPU_MEMORY=grow
nvidia-smi --query-gpu=index,name,memory.total --format=csv >"$out/gpus.csv" 2>&1 || true
phase_test() {
	if [[ -x "$bundle/train.test" ]]; then
		step dp-test "${TEST_LIMIT:-90}" "$run" train.test -test.run 'DataParallel|OneDevice|DevicesValidation|AliasSameRun' -test.v -test.timeout 80s
	else
		echo "=== dp-test skipped: no train.test in $bundle" | tee -a "$out/summary.txt"
	fi
}
phase_small() {
	local b="${SMALL_BATCH:-16}" d
	for d in "${counts[@]}"; do
		step "train-small-${d}dev" "${SMALL_LIMIT:-170}" "$run" blackmamba bench -what train-step -config small -dtype bfloat16 \
			-batch "$b" -seq "${SMALL_SEQ:-2048}" -reps 5 -devices "$d" "${alias[@]}" -json "$out/bench-train-small-${d}dev.json"
	done
}
phase_loss() {
	local d
	rm -rf "$work" && mkdir -p "$work"
	for d in "${counts[@]}"; do
		step "loss-${d}dev" "${LOSS_LIMIT:-60}" "$run" blackmamba train -config "${LOSS_CONFIG:-tiny}" -corpus "$corpus" \
			-steps "${LOSS_STEPS:-20}" -batch "${LOSS_BATCH:-8}" -seq "${LOSS_SEQ:-256}" -log-every 1 -eval-batches 2 \
			-seed 1 -devices "$d" "${alias[@]}" -dir "$work/loss-${d}dev"
		cp "$work/loss-${d}dev/metrics.jsonl" "$out/loss-${d}dev.jsonl"
	done
	step loss-compare 20 "$run" blackmamba compare-runs -tol 1e-2 "$out/loss-1dev.jsonl" "$out/loss-${devices}dev.jsonl"
}
phase_experts() {
	# Expert parallelism on DEVICES GPUs: the small step at a global batch of SMALL_BATCH x
	# SMALL_SEQ (default 32 x 512) with the experts split over the GPUs (-shard-experts), the
	# data-parallel tests (with variables split over the devices among them), the same step with
	# the experts replicated.
	local b="${SMALL_BATCH:-32}" s="${SMALL_SEQ:-512}" x
	for x in split test replicated; do
		if [[ $x == test ]]; then
			phase_test
			continue
		fi
		step "train-small-${devices}dev-$x" "${SMALL_LIMIT:-170}" "$run" blackmamba bench -what train-step -config small \
			-dtype bfloat16 -batch "$b" -seq "$s" -reps 5 -devices "$devices" "${alias[@]}" $([[ $x == split ]] && echo -shard-experts) \
			-json "$out/bench-train-small-${devices}dev-$x.json"
	done
}
phase_big() {
	local d x
	for d in "${counts[@]}"; do
		x="" # -shard-experts with SHARD_EXPERTS=1 on more than one GPU
		[[ "${SHARD_EXPERTS:-0}" == 1 ]] && ((d > 1)) && x=-shard-experts
		step "train-1.5b-${d}dev${x:+-split}" "${BIG_LIMIT:-270}" "$run" blackmamba bench -what train-step -config 1.5b -dtype bfloat16 \
			-batch "${BIG_BATCH:-4}" -seq 2048 -reps 5 -devices "$d" "${alias[@]}" $x -json "$out/bench-train-1.5b-${d}dev${BIG_BATCH:+-b$BIG_BATCH}${x:+-split}.json"
	done
}
case "$phase" in
test) phase_test ;;
small) phase_small ;;
loss) phase_loss ;;
dp)
	phase_test
	phase_small
	phase_loss
	;;
1.5b) phase_big ;;
experts) phase_experts ;;
*)
	echo "unknown phase $phase (want test, small, loss, dp, 1.5b or experts)" >&2
	exit 2
	;;
esac
