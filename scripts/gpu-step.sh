# Sourced by the GPU scripts (gpu-bench.sh, gpu-multi.sh): step NAME SECONDS CMD... runs CMD
# with a time limit, its output in $out/NAME.log, and appends the log's tail and the exit
# status to $out/summary.txt, so that a slow step cannot take the others down.
step() {
	local name="$1" limit="$2"
	shift 2
	echo "=== $name (limit ${limit}s)" | tee -a "$out/summary.txt"
	local t0=$SECONDS
	timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
	local rc=$?
	tail -n 40 "$out/$name.log" >>"$out/summary.txt"
	echo "--- $name rc=$rc in $((SECONDS - t0))s" | tee -a "$out/summary.txt"
}
