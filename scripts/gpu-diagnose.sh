#!/usr/bin/env bash
# Finds where XLA spends its compilation time on the training graphs, from the bundle (make
# gpu-bundle) on a GPU machine. For each case it compiles one training step (bench -what
# train-step, one timed repetition) under its own time limit, with XLA's compilation statistics
# and per-phase logging on, and the HLO modules dumped as text (before and after optimisation);
# the dumps are packed into OUT/hlo-CASE.tar.xz. Cases:
#
#   transformer      small-transformer, bf16, 16 x 512 (its step did not compile in 9 minutes)
#   transformer-at0  the same with XLA's autotuning off (--xla_gpu_autotune_level=0)
#   transformer-t128 the same at 16 x 128 (how compilation grows with the sequence length)
#   blackmamba       small BlackMamba, bf16, 16 x 512 (4 unrolled Sinkhorn rounds, the default)
#   blackmamba-sk1   the same with one unrolled Sinkhorn round (sinkhorn_max_iter 1)
#   mamba            small dense Mamba, bf16, 16 x 512
#   decode           batch-1 greedy decoding of the 1.5b preset (bf16 weights, 128 tokens): the
#                    kernels (thunks) per decode step, read from the dumped thunk sequence
#   decode-cmdbuf    the same with XLA's command buffers (CUDA graphs) allowed for every kind of
#                    kernel and graphs of any size, against per-kernel launch overhead
#   decode-fa0       the decode case with XLA's fusion autotuner off
#                    (--xla_gpu_experimental_enable_fusion_autotuner=false): with it on, the
#                    step's products with small outputs (x_proj, out_proj, the experts' fc2, the
#                    router) became Triton reduction fusions fed by a separate kernel that
#                    writes the whole elementwise product to memory
#   decode-t         the decode case with the steps reading the weights' transposed copies
#                    (bm.TransposeStepWeights: row reductions instead of column reductions)
#   decode-t-fa0     both: the transposed copies and the fusion autotuner off
#   decode-tn        the decode case with the steps reading the transposed copies with the norm
#                    gains folded into the blocks' first products and the routers' copies
#                    (bm.FoldStepWeights: at batch 1 float32 row reductions, the norm's sum of
#                    squares an extra row of each block's first product)
#   decode-tn-gate, decode-tn-res, decode-tn-fuse
#                    decode-tn with the config's step_fuse "gate" (the Mamba output gate in the
#                    state update's sum), "residual" (the residual add in each block's last
#                    product), both
#   decode-tn-res-cmdbuf  decode-tn-res with the command buffers of decode-cmdbuf
#   decode-tn-res-nocmdbuf  decode-tn-res with command buffers off (XLA uses them by default)
#   decode-tn-res-resident  decode-tn-res with the steps held (as above) and resident
#                    (bm.GreedyDecoder.GenerateResident: every input of a call stays on the
#                    device and is donated, on XLA written over by the call's outputs), one row each
#                    (DECODE_LOOP=resident: that row alone)
#   decode-ncu       the decode case's bench (3 tokens, one pass) under Nsight Compute: the
#                    duration of every kernel (gpu__time_duration), as CSV in OUT/ncu-decode.csv,
#                    with XLA's autotuning off so that the compilation launches few kernels of
#                    its own; ncu's own timings only, the bench's are not meaningful under it
#   scan             the default selective scan at B=8 T=2048 D=1536 N=16, float32 (forward, and
#                    forward+backward; 5 timed runs) with its optimised HLO and thunk sequences
#                    kept (OUT/scan-*.xz): which fusions the unrolled chunks became. When the
#                    machine has Nsight Systems (nsys), the same run again under it, with the
#                    kernel summary (time per kernel name) in OUT/scan-nsys-k*.csv; otherwise
#                    under Nsight Compute (each kernel's duration in OUT/scan-ncu.csv.xz)
#   decode-nsys      the 1.5b decode bench (bf16, folded copies, step_fuse residual, 64 tokens,
#                    one pass) under Nsight Systems when the machine has it: the kernel summary
#                    in OUT/decode-nsys-kernels*.csv (Nsight Compute crashed under the plugin)
#   step2048         small BlackMamba, bf16, 8 x 2048: the step whose compilation spends 2.5-3
#                    minutes in one reduction fusion ("Compiling module input_reduce_fusion.N"),
#                    and the same with one XLA option changed, to find which part of the
#                    compiler takes that time:
#   step2048-fa0       the fusion autotuner off (--xla_gpu_experimental_enable_fusion_autotuner=false)
#   step2048-at0       all autotuning off (--xla_gpu_autotune_level=0)
#   step2048-noepi     no reduction epilogue fusion (--xla_gpu_enable_reduction_epilogue_fusion=false)
#   step2048-split     the model scanning the batch in pieces of 8192 tokens (scan_max_tokens):
#                      the slow kernel appeared at 16K tokens per device, not at 8K
#   step2048-c16       the scan's former chunks of 16 (scan_chunk), with which the slow
#                      fusion was measured; step2048-c16-fa0 and step2048-c16-at0 the same with
#                      the fusion autotuner or all autotuning off (the cases above run the
#                      default chunks of 8, with which no fusion was slow)
#   step-1.5b        the 1.5b BlackMamba training step at BATCH x SEQ (with TRACE=1: what part
#                    of the step does not shrink with the batch, from two runs at two batches)
#
#   scripts/gpu-diagnose.sh BUNDLE_DIR [CASE...]     (default: all, in the order above)
#
# Environment: LIMIT (seconds per case, default 150), DECODE_TOKENS (default 128), DECODE_LOOP
# (bench -decode-loop, default held), DECODE_FUSE (the decode cases' -decode-step-fuse list in
# place of the case's own, e.g. residual,residual+router+dt: one row each), DECODE_UNROLL,
# DECODE_BATCH and
# DECODE_STEP_ROWS (the decode cases' -decode-unroll, -decode-batch and -decode-step-rows lists,
# default 1, 1 and 0), BATCH and SEQ (default 16 and 512; a case
# that names its own length keeps it), DUMP (default 1; 0 skips the HLO dumps, which are large at
# 2048 tokens), TRACE (1: the decode and scan cases also record every kernel of their timed
# regions with CUPTI, bench -kernel-trace, into OUT/trace-CASE.json, with the largest kernels in
# summary.txt; the scan case then skips the Nsight tools), CPUPROFILE (1: the decode and scan
# cases also write a Go CPU profile, OUT/cpu-CASE.pprof) and SCAN_SHAPE (the scan case's
# B,T,D,N, default 8,2048,1536,16), XLA_EXTRA (XLA flags added to every case's own, e.g.
# --xla_gpu_command_buffer_update_mode=SKIP_TEMP) and VMODULE (more TF_CPP_VMODULE entries, e.g.
# command_buffer_thunk=3: every update of a recorded CUDA graph and the allocations that moved),
# STEP_ALIAS (the training-step cases' bench -alias: auto, on or off).
set -uo pipefail
bundle="$(cd "$1" && pwd)"
shift
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
run="$bundle/run.sh"
export BLACKMAMBA_GPU_MEMORY=grow
cases=("$@")
((${#cases[@]} == 0)) && cases=(transformer transformer-at0 transformer-t128 blackmamba blackmamba-sk1 mamba)
echo '{"sinkhorn_max_iter": 1}' >"$out/small-sk1.json"
echo '{"scan_max_tokens": 8192}' >"$out/small-split.json"
echo '{"scan_chunk": 16}' >"$out/small-c16.json"
# The Nsight tools of the machine, if any (on PATH or where the CUDA images install them).
find_ncu() { command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1; }
find_nsys() { command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda*/bin/nsys 2>/dev/null | head -n 1; }
# nsys_kernels NAME ARGS...: runs the bundle's blackmamba with ARGS under Nsight Systems ($nsys)
# within LIMIT, logs to OUT/NAME.log.xz and writes the kernel summary (time per kernel name) to
# OUT/NAME-k*.csv.
nsys_kernels() {
	local name="$1" t0=$SECONDS
	shift
	timeout -k 10 "${LIMIT:-150}" "$run" "$nsys" profile --trace cuda --sample none --cpuctxsw none -o "/tmp/$name" -f true \
		"$bundle/blackmamba" "$@" >"$out/$name.log" 2>&1
	echo "--- $name rc=$? in $((SECONDS - t0))s" | tee -a "$out/summary.txt"
	"$nsys" stats --report cuda_gpu_kern_sum --format csv -o "/tmp/$name-k" "/tmp/$name.nsys-rep" >>"$out/$name.log" 2>&1
	cp "/tmp/$name-k"*.csv "$out/" 2>/dev/null
	xz -f "$out/$name.log"
}
# trace_summary CASE: the totals and largest kernels of each traced region of the case's log.
trace_summary() {
	[[ "${TRACE:-0}" == 1 ]] && grep -A 32 -E ' kernels in [0-9.]+ µs; busy' "$out/$1.log" >>"$out/summary.txt"
	return 0
}
# cmdbuf_summary CASE: with VMODULE=command_buffer_thunk=3, how often the case's recorded CUDA
# graphs were executed and updated, the updates by command count and moved allocations, and the
# time they took.
cmdbuf_summary() {
	local log="$out/$1.log"
	grep -q 'command buffer on device' "$log" || return 0
	{
		echo "command buffers: $(grep -c 'Execute command buffer' "$log") executions, $(grep -c 'Update command buffer' "$log") updates"
		grep 'Update command buffer' "$log" | sed -n -E 's/.*num_commands=([0-9]+); updated_allocs=([0-9]+).*/  update of \1 commands, \2 allocations moved/p' | sort | uniq -c | sort -rn | head -n 8
		grep 'Updated command buffer in' "$log" | sed -n -E 's/.* in ([0-9]+) .*/\1/p' | sort -n |
			awk '{a[NR] = $1} END {if (NR) print "  update time, us: median " a[int(NR / 2) + 1] ", max " a[NR] " (" NR " updates)"}'
	} >>"$out/summary.txt"
}
for c in "${cases[@]}"; do
	trace=()
	[[ "${TRACE:-0}" == 1 ]] && trace=(-kernel-trace "$out/trace-$c.json")
	[[ "${CPUPROFILE:-0}" == 1 ]] && trace+=(-cpuprofile "$out/cpu-$c.pprof")
	cfg=small seq="${SEQ:-512}" batch="${BATCH:-16}" flags="" decode=false weights="${DECODE_STEP_WEIGHTS:-inout}" fuse=none loop="${DECODE_LOOP:-held}"
	case "$c" in
	transformer) cfg=small-transformer ;;
	transformer-at0) cfg=small-transformer flags="--xla_gpu_autotune_level=0" ;;
	transformer-t128) cfg=small-transformer seq=128 ;;
	blackmamba) ;;
	blackmamba-sk1) cfg="$out/small-sk1.json" ;;
	mamba) cfg=small-mamba ;;
	step2048) batch=8 seq=2048 ;;
	step2048-fa0) batch=8 seq=2048 flags="--xla_gpu_experimental_enable_fusion_autotuner=false" ;;
	step2048-at0) batch=8 seq=2048 flags="--xla_gpu_autotune_level=0" ;;
	step2048-noepi) batch=8 seq=2048 flags="--xla_gpu_enable_reduction_epilogue_fusion=false" ;;
	step2048-split) batch=8 seq=2048 cfg="$out/small-split.json" ;;
	step2048-c16) batch=8 seq=2048 cfg="$out/small-c16.json" ;;
	step2048-c16-fa0) batch=8 seq=2048 cfg="$out/small-c16.json" flags="--xla_gpu_experimental_enable_fusion_autotuner=false" ;;
	step2048-c16-at0) batch=8 seq=2048 cfg="$out/small-c16.json" flags="--xla_gpu_autotune_level=0" ;;
	step-1.5b) cfg=1.5b ;;
	decode) decode=true ;;
	decode-fa0) decode=true flags="--xla_gpu_experimental_enable_fusion_autotuner=false" ;;
	decode-t) decode=true weights=transposed ;;
	decode-t-fa0) decode=true weights=transposed flags="--xla_gpu_experimental_enable_fusion_autotuner=false" ;;
	decode-tn) decode=true weights=folded ;;
	decode-tn-gate) decode=true weights=folded fuse=gate ;;
	decode-tn-res) decode=true weights=folded fuse=residual ;;
	decode-tn-fuse) decode=true weights=folded fuse=gate+residual ;;
	decode-ncu)
		ncu="$(find_ncu)"
		echo "=== decode-ncu: $ncu (limit ${LIMIT:-150}s)" | tee -a "$out/summary.txt"
		t0=$SECONDS
		XLA_FLAGS="--xla_gpu_autotune_level=0" timeout -k 10 "${LIMIT:-150}" "$run" "$ncu" --clock-control none \
			--metrics gpu__time_duration.sum --csv --log-file "$out/ncu-decode.csv" --launch-count "${NCU_LAUNCHES:-8000}" \
			"$bundle/blackmamba" bench -what decode -config 1.5b -dtype bfloat16 -decode-tokens 3 -reps 1 >"$out/$c.log" 2>&1
		echo "--- $c rc=$? in $((SECONDS - t0))s, $(grep -c gpu__time_duration "$out/ncu-decode.csv" 2>/dev/null) kernels timed" | tee -a "$out/summary.txt"
		xz -f "$out/ncu-decode.csv" "$out/$c.log" 2>/dev/null
		continue
		;;
	scan)
		# SCAN_VARIANTS (default "default"): bench -scan-variants.
		dump=/tmp/hlo-scan
		rm -rf "$dump"
		echo "=== scan: dumps (limit ${LIMIT:-150}s)" | tee -a "$out/summary.txt"
		t0=$SECONDS
		sbench=(bench -what scan -scan-shape "${SCAN_SHAPE:-8,2048,1536,16}" -scan-variants "${SCAN_VARIANTS:-default}" -reps 5)
		XLA_FLAGS="--xla_dump_to=$dump --xla_dump_hlo_as_text" timeout -k 10 "${LIMIT:-150}" "$run" blackmamba "${sbench[@]}" \
			-json "$out/bench-scan.json" "${trace[@]}" >"$out/scan.log" 2>&1
		echo "--- scan rc=$? in $((SECONDS - t0))s" | tee -a "$out/summary.txt"
		grep -E '^scan' "$out/scan.log" >>"$out/summary.txt"
		trace_summary scan
		for f in "$dump"/*thunk_sequence.txt; do
			[[ -e "$f" ]] || continue
			echo "$(grep -c -E '^[0-9]+: k' "$f") kernel thunks: $(basename "$f")"
		done | sort -rn | head -n 8 >>"$out/summary.txt"
		for f in "$dump"/*{gpu_after_optimizations.txt,thunk_sequence.txt,buffer-assignment.txt}; do
			[[ -e "$f" && $(stat -c %s "$f") -gt 2000 ]] && xz -c "$f" >"$out/scan-$(basename "$f").xz"
		done
		nsys="$(find_nsys)" ncu="$(find_ncu)"
		echo "nsys: ${nsys:-none}; ncu: ${ncu:-none}" | tee -a "$out/summary.txt"
		if [[ "${TRACE:-0}" == 1 ]]; then
			: # the kernels' times came from CUPTI
		elif [[ -n "$nsys" ]]; then
			nsys_kernels scan-nsys "${sbench[@]}"
		elif [[ -n "$ncu" ]]; then
			# Nsight Compute: the duration of each kernel of one forward and one forward+backward
			# run (the bench's own times are not meaningful under it).
			t0=$SECONDS
			timeout -k 10 "${LIMIT:-150}" "$run" "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
				--log-file "$out/scan-ncu.csv" --launch-skip "${NCU_SKIP:-0}" --launch-count "${NCU_LAUNCHES:-3000}" \
				"$bundle/blackmamba" bench -what scan -scan-shape 8,2048,1536,16 -scan-variants "${SCAN_VARIANTS:-default}" -reps 1 \
				>"$out/scan-ncu.log" 2>&1
			echo "--- scan-ncu rc=$? in $((SECONDS - t0))s, $(grep -c gpu__time_duration "$out/scan-ncu.csv" 2>/dev/null) kernels timed" | tee -a "$out/summary.txt"
			xz -f "$out/scan-ncu.csv" "$out/scan-ncu.log" 2>/dev/null
		fi
		xz -f "$out/scan.log"
		continue
		;;
	decode-nsys)
		nsys="$(find_nsys)"
		echo "=== decode-nsys: ${nsys:-no nsys} (limit ${LIMIT:-150}s)" | tee -a "$out/summary.txt"
		if [[ -n "$nsys" ]]; then
			nsys_kernels decode-nsys bench -what decode -config 1.5b -dtype bfloat16 -decode-tokens 64 \
				-decode-step-weights folded -decode-step-fuse residual -reps 1
			xzcat "$out/decode-nsys.log.xz" | grep -E '^decode' >>"$out/summary.txt"
		fi
		continue
		;;
	decode-tn-res-resident) decode=true weights=folded fuse=residual loop="${DECODE_LOOP:-held,resident}" ;;
	decode-tn-res-nocmdbuf)
		# Command buffers (CUDA graphs) off: XLA launches every kernel itself.
		decode=true weights=folded fuse=residual flags="--xla_gpu_enable_command_buffer="
		;;
	decode-cmdbuf | decode-tn-res-cmdbuf)
		decode=true
		[[ "$c" == decode-tn-res-cmdbuf ]] && weights=folded fuse=residual
		flags="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,COLLECTIVES,CONDITIONAL,WHILE --xla_gpu_graph_min_graph_size=1"
		;;
	*)
		echo "unknown case $c" >&2
		exit 2
		;;
	esac
	if $decode; then
		fuse="${DECODE_FUSE:-$fuse}"
		what="1.5b decode, bf16, ${DECODE_TOKENS:-128} tokens" lines="^decode"
		bench=(-what decode -config 1.5b -dtype bfloat16 -decode-tokens "${DECODE_TOKENS:-128}" -decode-unroll "${DECODE_UNROLL:-1}" -decode-batch "${DECODE_BATCH:-1}" -decode-step-rows "${DECODE_STEP_ROWS:-0}" -decode-step-weights "$weights" -decode-step-fuse "$fuse" -decode-loop "$loop" -reps 3)
	else
		what="-config $cfg -batch $batch -seq $seq" lines="Very slow|took|^train-step|^graph"
		bench=(-what graph,train-step -config "$cfg" -dtype bfloat16 -batch "$batch" -seq "$seq" -reps 1 -alias "${STEP_ALIAS:-auto}")
		flags="--xla_gpu_print_compilation_stats $flags"
	fi
	dump="/tmp/hlo-$c"
	rm -rf "$dump"
	echo "=== $c: $what ${flags:+XLA flags $flags} (limit ${LIMIT:-150}s)" | tee -a "$out/summary.txt"
	t0=$SECONDS
	dumpflags="--xla_dump_to=$dump --xla_dump_hlo_as_text"
	[[ "${DUMP:-1}" == 0 ]] && dumpflags=""
	flags="$(echo $flags ${XLA_EXTRA:-})"
	xla_flags="$(echo $dumpflags $flags)" # without surrounding blanks: XLA reads a value not starting with -- as a file name
	XLA_FLAGS="$xla_flags" \
		TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE="gpu_compiler=3,nvptx_compiler=3${VMODULE:+,$VMODULE}" \
		timeout -k 10 "${LIMIT:-150}" "$run" blackmamba bench "${bench[@]}" -json "$out/bench-$c.json" "${trace[@]}" >"$out/$c.log" 2>&1
	echo "--- $c rc=$? in $((SECONDS - t0))s" | tee -a "$out/summary.txt"
	grep -E "$lines" "$out/$c.log" | tail -n 8 >>"$out/summary.txt"
	trace_summary "$c"
	cmdbuf_summary "$c"
	if $decode; then
		# Kernels per executable: the thunks of each module's thunk sequence (the decode step is
		# the one with the most), and how many of them are library matrix multiplications.
		for f in "$dump"/*thunk_sequence.txt; do
			[[ -e "$f" ]] || continue
			echo "$(grep -c -E '^[0-9]+: k' "$f") thunks, $(grep -c -i -E '^[0-9]+: .*(gemm|cublas)' "$f") matmuls: $(basename "$f")"
		done | sort -rn | head -n 5 >>"$out/summary.txt"
		# The kinds of kernel of the greedy step (the single-step graph): fusion names without
		# their numbers, with their counts.
		for f in "$dump"/*greedyExec*thunk_sequence.txt; do
			[[ -e "$f" ]] || continue
			echo "kernel kinds of $(basename "$f"):"
			sed -n -E 's/^[0-9]+: k[A-Za-z]+ \[[^]]*\] ([a-z_]*[a-z]).*/\1/p' "$f" | sort | uniq -c | sort -rn
		done >>"$out/summary.txt"
		# The single-step graph's optimised HLO and thunk sequence, small enough to keep with the
		# results (the whole dump is not).
		for f in "$dump"/*greedyExec*{gpu_after_optimizations.txt,thunk_sequence.txt}; do
			b="$(basename "$f")"
			[[ -e "$f" ]] && xz -c "$f" >"$out/step-$c.${b%%.*}.${b##*greedyExec_func1_0.}.xz"
		done
	fi
	[[ -d "$dump" ]] && { (cd /tmp && tar -cJf "$out/hlo-$c.tar.xz" "hlo-$c" 2>/dev/null) || true; }
	xz -f "$out/$c.log"
done
