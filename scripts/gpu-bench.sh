#!/usr/bin/env bash
# Runs the speed benchmarks and self-checks on a GPU machine from the bundle (make gpu-bundle),
# writing logs and JSON under OUT (default ./gpu-out). Each step has its own time limit so a
# slow step cannot take the others down.
#
#   scripts/gpu-bench.sh BUNDLE_DIR check   backends, selfcheck, bm tests on the GPU
#   scripts/gpu-bench.sh BUNDLE_DIR scan    scan variants at B=8 T=2048 D=1536 N=16, and T=8192
#   scripts/gpu-bench.sh BUNDLE_DIR train   MoE vs dense block, training steps (small f32/bf16, 1.5b)
set -uo pipefail
bundle="$(cd "$1" && pwd)"
phase="$2"
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
run="$bundle/run.sh"
step() { # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.log
	local name="$1" limit="$2"
	shift 2
	echo "=== $name (limit ${limit}s)" | tee -a "$out/summary.txt"
	local t0=$SECONDS
	timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
	local rc=$?
	tail -n 40 "$out/$name.log" >>"$out/summary.txt"
	echo "--- $name rc=$rc in $((SECONDS - t0))s" | tee -a "$out/summary.txt"
}
export BLACKMAMBA_GPU_MEMORY=grow
case "$phase" in
check)
	# Correctness checks compare float32 results with tight tolerances: turn off TF32 (cuBLAS)
	# and XLA's Triton GEMMs, which use TF32 for float32 dots by default on NVIDIA GPUs.
	export NVIDIA_TF32_OVERRIDE=0
	export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false"
	step backends 60 "$run" blackmamba backends
	step selfcheck 180 "$run" blackmamba selfcheck
	step bm-tests "$((${BM_TEST_LIMIT:-280} + 20))" "$run" bash -c 'BLACKMAMBA_TEST_BACKEND="$GOMLX_BACKEND" exec "$0" -test.timeout "${BM_TEST_LIMIT:-280}s" -test.v' "$bundle/bm.test"
	;;
scan)
	step scan-2048 "${SCAN_LIMIT:-300}" "$run" blackmamba bench -what scan -scan-shape 8,2048,1536,16 -scan-variants "${SCAN_VARIANTS:-all}" -reps 10 -json "$out/bench-scan-2048.json"
	step scan-8192 150 "$run" blackmamba bench -what scan -scan-shape 8,8192,1536,16 -scan-variants default -reps 5 -json "$out/bench-scan-8192.json"
	;;
train)
	step moe 200 "$run" blackmamba bench -what moe -config small -dtype bfloat16 -moe-tokens 16384 -reps 10 -json "$out/bench-moe.json"
	step train-small-f32 200 "$run" blackmamba bench -what train-step -config small -dtype float32 -batch 8 -seq 2048 -reps 10 -json "$out/bench-train-small-f32.json"
	step train-small-bf16 200 "$run" blackmamba bench -what train-step -config small -dtype bfloat16 -batch 8 -seq 2048 -reps 10 -json "$out/bench-train-small-bf16.json"
	step train-1.5b 300 "$run" blackmamba bench -what train-step -config 1.5b -dtype bfloat16 -batch 4 -seq 2048 -reps 5 -json "$out/bench-train-1.5b.json"
	;;
*)
	echo "unknown phase $phase" >&2
	exit 2
	;;
esac
