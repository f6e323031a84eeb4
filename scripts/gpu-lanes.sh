#!/usr/bin/env bash
# Runs independent GPU jobs side by side on a machine with several GPUs: lane i is a shell
# command run with CUDA_VISIBLE_DEVICES set to its GPUs and OUT=$OUT/laneI, its output in
# $OUT/laneI/lane.log. A lane's GPUs are "i" by default, or the list before a colon:
#
#   scripts/gpu-lanes.sh "scripts/gpu-bench.sh dist/gpu-bundle moe" \
#                        "scripts/gpu-bench.sh dist/gpu-bundle breakdown" \
#                        "2,3: scripts/gpu-multi.sh dist/gpu-bundle 1.5b"
#
# It waits for every lane and prints each lane's summary.
set -uo pipefail
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
pids=()
i=0
for lane in "$@"; do
	gpus="$i"
	if [[ "$lane" =~ ^([0-9,]+):[[:space:]]*(.*)$ ]]; then
		gpus="${BASH_REMATCH[1]}"
		lane="${BASH_REMATCH[2]}"
	fi
	dir="$out/lane$i"
	mkdir -p "$dir"
	echo "lane $i on GPU $gpus: $lane" | tee "$dir/lane.log"
	(CUDA_VISIBLE_DEVICES="$gpus" OUT="$dir" bash -c "$lane" >>"$dir/lane.log" 2>&1) &
	pids+=($!)
	i=$((i + 1))
done
rc=0
for j in "${!pids[@]}"; do
	wait "${pids[$j]}" || rc=1
	echo "=== lane $j done"
	cat "$out/lane$j/summary.txt" 2>/dev/null | grep -E '^(===|---)' || tail -n 5 "$out/lane$j/lane.log"
done
exit $rc
