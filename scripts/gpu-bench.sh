#!/usr/bin/env bash
# Runs the speed benchmarks and self-checks on a GPU machine from the bundle (make gpu-bundle),
# writing logs and JSON under OUT (default ./gpu-out). Each step has its own time limit so a
# slow step cannot take the others down.
#
#   scripts/gpu-bench.sh BUNDLE_DIR check   backends, selfcheck, bm tests on the GPU
#   scripts/gpu-bench.sh BUNDLE_DIR scan    scan variants at B=8 T=2048 D=1536 N=16, and T=8192
#   scripts/gpu-bench.sh BUNDLE_DIR tests   the bm tests named by BM_TEST_RUN (a -test.run pattern)
#                                           on the GPU with TF32 off
#   scripts/gpu-bench.sh BUNDLE_DIR tests-all  the whole bm test binary on the GPU, TF32 off, in
#                                           groups, BM_TEST_JOBS side by side (BM_TEST_LIMIT
#                                           each; BM_TEST_GROUPS picks some of them)
#   scripts/gpu-bench.sh BUNDLE_DIR breakdown  each block kind of the small preset timed alone
#                                           (bf16, 8 x 2048, fwd and fwd+bwd), then the full step
#   scripts/gpu-bench.sh BUNDLE_DIR moe     the MoE block against a dense block of its active size
#   scripts/gpu-bench.sh BUNDLE_DIR train-small  small training steps (f32 and bf16, 8 x 2048)
#   scripts/gpu-bench.sh BUNDLE_DIR train-1.5b   the 1.5b training step (bf16, 4 x 2048)
#   scripts/gpu-bench.sh BUNDLE_DIR train   moe, train-small and train-1.5b
#   scripts/gpu-bench.sh BUNDLE_DIR decode  batch-1 greedy generation of the 1.5b preset (bf16
#                                           weights, 512 tokens): ms/token, tokens/s, weight GB/s
#   scripts/gpu-bench.sh BUNDLE_DIR kernels chains of dependent row-vector products (bf16): what
#                                           one kernel of a batch-1 decode step costs, with the
#                                           kernel count of each compiled chain
#   scripts/gpu-bench.sh BUNDLE_DIR all     every phase without correctness checks: moe,
#                                           train-small, train-1.5b, decode, breakdown
#
# Environment: MOE_LIMIT (seconds, default 200) and ROUTER=0 (skip the router timing) for moe;
# SCAN_SHAPES, SCAN_VARIANTS and SCAN_EACH (one process per variant) for scan; DECODE_UNROLL (greedy steps per call), DECODE_BATCH
# (sequences decoded together) and DECODE_STEP_ROWS (rows of the step's weight products, 0: not
# padded) and DECODE_STEP_WEIGHTS (inout and/or transposed), comma-separated lists, default 1, 1,
# 0 and inout, and DECODE_LIMIT for decode; BIG_BATCH (default 4), BIG_LIMIT (default 300 s)
# and BIG_ALIAS (default auto) for train-1.5b; SELFCHECKS (selfcheck -checks, default all three) and
# SELFCHECK_LIMIT (default 180 s), BM_TEST_LIMIT (default 280 s) for check; KERNEL_CHAINS
# (bench -kernel-chains) and KERNELS_LIMIT (default 120 s) for kernels.
set -uo pipefail
bundle="$(cd "$1" && pwd)"
phase="$2"
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
run="$bundle/run.sh"
# shellcheck source=gpu-step.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu-step.sh"
export BLACKMAMBA_GPU_MEMORY=grow
no_tf32() {
	# Correctness checks compare float32 results with tight tolerances: turn off TF32 (cuBLAS)
	# and XLA's Triton GEMMs, which use TF32 for float32 dots by default on NVIDIA GPUs.
	export NVIDIA_TF32_OVERRIDE=0
	export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false"
}
phase_moe() {
	step moe "${MOE_LIMIT:-200}" "$run" blackmamba bench -what moe -config small -dtype bfloat16 -moe-tokens 16384 -reps 10 -json "$out/bench-moe.json"
	[[ "${ROUTER:-1}" == 0 ]] || step router 100 "$run" blackmamba bench -what router -config small -moe-tokens 16384 -reps 10 -json "$out/bench-router.json"
}
phase_train_small() {
	# TRAIN_SMALL_DTYPES (default "bfloat16 float32") and TRAIN_SMALL_LIMIT (seconds per step,
	# default 200; compiling the 2048-token step has taken up to four minutes).
	local dt short
	for dt in ${TRAIN_SMALL_DTYPES:-bfloat16 float32}; do
		short="${dt/bfloat16/bf16}" && short="${short/float32/f32}"
		step "train-small-$short" "${TRAIN_SMALL_LIMIT:-200}" "$run" blackmamba bench -what train-step -config small -dtype "$dt" -batch 8 -seq 2048 -reps 10 -json "$out/bench-train-small-$short.json"
	done
}
phase_train_big() {
	# BIG_ALIAS (default auto): the step's bench -alias values, one process each after the
	# other, e.g. "auto off" for the in-place update against none on one machine; the JSON of
	# each value other than auto is bench-train-1.5b-alias-VALUE.json.
	local a name
	for a in ${BIG_ALIAS:-auto}; do
		name=train-1.5b && [[ "$a" == auto ]] || name="train-1.5b-alias-$a"
		step "$name" "${BIG_LIMIT:-300}" "$run" blackmamba bench -what train-step -config 1.5b -dtype bfloat16 -batch "${BIG_BATCH:-4}" -seq 2048 -reps 5 -alias "$a" -json "$out/bench-$name.json"
	done
}
phase_decode() {
	step decode-1.5b "${DECODE_LIMIT:-240}" "$run" blackmamba bench -what decode -config 1.5b -dtype bfloat16 -decode-tokens 512 -decode-unroll "${DECODE_UNROLL:-1}" -decode-batch "${DECODE_BATCH:-1}" -decode-step-rows "${DECODE_STEP_ROWS:-0}" -decode-step-weights "${DECODE_STEP_WEIGHTS:-inout}" -reps 5 -json "$out/bench-decode-1.5b.json"
}
phase_breakdown() {
	step breakdown "${BREAKDOWN_LIMIT:-330}" "$run" blackmamba bench -what breakdown -config small -dtype bfloat16 -batch 8 -seq 2048 -reps 5 -json "$out/bench-breakdown.json"
}
case "$phase" in
tests)
	no_tf32
	step bm-tests-part "$((${BM_TEST_LIMIT:-280} + 20))" "$run" bash -c 'BLACKMAMBA_TEST_BACKEND="$GOMLX_BACKEND" exec "$0" -test.run "${BM_TEST_RUN:-.}" -test.timeout "${BM_TEST_LIMIT:-280}s" -test.v' "$bundle/bm.test"
	;;
tests-all)
	# The whole bm test binary on one GPU, TF32 off, in groups of tests, each group a process
	# within BM_TEST_LIMIT (default 500) s, at most BM_TEST_JOBS (default 3) side by side (their
	# compilations share the host's cores; the GPU has room for all): the decoder check against
	# the forward (dec-mamba: BlackMamba and dense Mamba, dec-attn: the two Transformers; dec:
	# all four), the greedy-generation tests (gen), the decode step variants (steps-mamba,
	# steps-attn; steps: all), the scan tests (scan) and every other test (rest).
	# BM_TEST_GROUPS (default "dec-mamba dec-attn gen steps-mamba steps-attn scan rest") picks
	# the groups. On one H200 (2026-11-29), three side by side: dec-mamba 299 s, dec-attn 301 s,
	# the step variants' Transformer-MoE cases alone 227 s; five side by side, the rest group
	# about 470 s. All groups take more than one 10-minute job: split them over two or three.
	# Logs bm-tests-GROUP.log.
	no_tf32
	limit="${BM_TEST_LIMIT:-500}"
	dec='^TestDecoderMatchesForward$'
	gen='Greedy|GenerateStream|OneTokenPrompt'
	steps='^TestStepVariantsGreedyTokens$|^TestFoldedStepLogitsBF16$'
	scan='Scan'
	# name:run pattern:skip pattern (a run pattern's slash selects subtests by architecture; go
	# test splits a pattern at its top-level | first, so A|B/x would filter B's subtests only)
	all=("dec:$dec:" "dec-mamba:$dec/^(blackmamba|mamba)\$:" "dec-attn:$dec/^transformer:"
		"gen:$gen:$steps" "steps:$steps:" "steps-mamba:^(TestStepVariantsGreedyTokens|TestFoldedStepLogitsBF16)\$/^(blackmamba|mamba)\$:"
		"steps-attn:^TestStepVariantsGreedyTokens\$/^transformer:" "scan:$scan:" "rest:.:$dec|$gen|$steps|$scan")
	groups=()
	for name in ${BM_TEST_GROUPS:-dec-mamba dec-attn gen steps-mamba steps-attn scan rest}; do
		found=""
		for g in "${all[@]}"; do
			[[ "${g%%:*}" == "$name" ]] && groups+=("$g") && found=1
		done
		[[ -n "$found" ]] || { echo "BM_TEST_GROUPS: unknown group \"$name\" (known: ${all[*]%%:*})" >&2; exit 2; }
	done
	jobs_max="${BM_TEST_JOBS:-3}"
	running=0
	for g in "${groups[@]}"; do
		if ((running >= jobs_max)); then
			wait -n
			running=$((running - 1))
		fi
		IFS=: read -r name runpat skippat <<<"$g"
		(timeout -k 10 "$((limit + 20))" "$run" bash -c 'BLACKMAMBA_TEST_BACKEND="$GOMLX_BACKEND" exec "$0" -test.run "$1" -test.skip "$2" -test.timeout "$3s" -test.v' "$bundle/bm.test" "$runpat" "$skippat" "$limit" >"$out/bm-tests-$name.log" 2>&1
			echo "--- bm-tests-$name (run $runpat, skip ${skippat:-none}) rc=$?" >>"$out/summary-$name.txt") &
		running=$((running + 1))
	done
	wait
	for g in "${groups[@]}"; do
		g="${g%%:*}"
		cat "$out/summary-$g.txt" >>"$out/summary.txt"
		rm -f "$out/summary-$g.txt"
		echo "    $(grep -c '^--- PASS' "$out/bm-tests-$g.log") passed, $(grep -c '^--- FAIL' "$out/bm-tests-$g.log") failed, $(grep -c '^--- SKIP' "$out/bm-tests-$g.log") skipped" >>"$out/summary.txt"
	done
	cat "$out/summary.txt"
	;;
breakdown) phase_breakdown ;;
decode) phase_decode ;;
moe) phase_moe ;;
train-small) phase_train_small ;;
train-1.5b) phase_train_big ;;
check)
	no_tf32
	step backends 60 "$run" blackmamba backends
	step selfcheck "${SELFCHECK_LIMIT:-180}" "$run" blackmamba selfcheck ${SELFCHECKS:+-checks "$SELFCHECKS"}
	step bm-tests "$((${BM_TEST_LIMIT:-280} + 20))" "$run" bash -c 'BLACKMAMBA_TEST_BACKEND="$GOMLX_BACKEND" exec "$0" -test.timeout "${BM_TEST_LIMIT:-280}s" -test.v' "$bundle/bm.test"
	;;
scan)
	# SCAN_SHAPES (default "2048 8192"): the sequence lengths to time, B = 8, D = 1536, N = 16;
	# every variant (SCAN_VARIANTS) at 2048, the default one at 8192.
	# SCAN_EACH=1 runs each variant of a comma-separated SCAN_VARIANTS in its own process
	# (bench-scan-2048-K.json), so that each row's peak memory is that variant's alone.
	for T in ${SCAN_SHAPES:-2048 8192}; do
		if [[ "$T" == 2048 && "${SCAN_EACH:-0}" == 1 ]]; then
			k=0
			IFS=, read -r -a each <<<"${SCAN_VARIANTS:-default}"
			for v in "${each[@]}"; do
				k=$((k + 1))
				step "scan-2048-$k" "${SCAN_LIMIT:-60}" "$run" blackmamba bench -what scan -scan-shape 8,2048,1536,16 -scan-variants "$v" -reps 10 -json "$out/bench-scan-2048-$k.json"
			done
		elif [[ "$T" == 2048 ]]; then
			step scan-2048 "${SCAN_LIMIT:-300}" "$run" blackmamba bench -what scan -scan-shape 8,2048,1536,16 -scan-variants "${SCAN_VARIANTS:-all}" -reps 10 -json "$out/bench-scan-2048.json"
		else
			step "scan-$T" 150 "$run" blackmamba bench -what scan -scan-shape "8,$T,1536,16" -scan-variants default -reps 5 -json "$out/bench-scan-$T.json"
		fi
	done
	;;
kernels)
	# Chains of dependent row-vector products (bench -what kernels, bf16, 20 timed calls each)
	# with XLA's dumps on, then the kernels each compiled chain became: one line per module
	# with its number of kernel thunks, so that the per-product times can be read per kernel.
	dump=/tmp/hlo-kernels
	rm -rf "$dump"
	XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=$dump --xla_dump_hlo_as_text" \
		step kernels "${KERNELS_LIMIT:-120}" "$run" blackmamba bench -what kernels ${KERNEL_CHAINS:+-kernel-chains "$KERNEL_CHAINS"} -reps 20 -json "$out/bench-kernels.json"
	for f in "$dump"/*thunk_sequence.txt; do
		[[ -e "$f" ]] || continue
		echo "$(grep -c -E '^[0-9]+: k' "$f") kernel thunks, $(grep -c -i -E '^[0-9]+: .*(gemm|cublas)' "$f") matmuls: $(basename "$f")"
	done | sort -n | tee "$out/kernels-thunks.txt" >>"$out/summary.txt"
	;;
train)
	phase_moe
	phase_train_small
	phase_train_big
	;;
all)
	phase_moe
	phase_train_small
	phase_train_big
	phase_decode
	phase_breakdown
	;;
*)
	echo "unknown phase $phase" >&2
	exit 2
	;;
esac
