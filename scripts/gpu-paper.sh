#!/usr/bin/env bash
# Runs the paper's experiments on one 4-GPU host in a single job each, from the bundle (make
# gpu-bundle) and a corpus sample (data/corpus-12m); run from the repository root. Every lane
# is one GPU (CUDA_VISIBLE_DEVICES, scripts/gpu-lanes.sh) with its own time limit; the lanes'
# partial results are merged on the machine into one result per experiment, with its figures,
# so that the committed JSON and figures come from one run of this script.
#
#   scripts/gpu-paper.sh BUNDLE_DIR training    experiment 1 (the five runs of the architecture
#                                               comparison) and the routing ablation of
#                                               experiment 2 (three more BlackMamba runs), eight
#                                               runs on four GPUs; then training.json,
#                                               plots-training/, and the balance figures and
#                                               ablation table (plots-balance/, balance.txt)
#   scripts/gpu-paper.sh BUNDLE_DIR inference   experiment 3 (latency of the four 1.5B-size
#                                               architectures: BlackMamba and dense Mamba on one
#                                               GPU, each Transformer on its own), then the PIQA
#                                               runtime and generation speed of a random-weight
#                                               1.5b model on the fourth GPU
#   scripts/gpu-paper.sh BUNDLE_DIR multi       data-parallel training on two GPUs
#                                               (scripts/gpu-multi.sh: the small preset's step on
#                                               1 and 2 GPUs, then the data-parallel test)
#   scripts/gpu-paper.sh BUNDLE_DIR latency     experiment 3 alone for FAMILY (default 2.8b), one
#                                               architecture per GPU
#   scripts/gpu-paper.sh BUNDLE_DIR latency-checks  the latency phase, each lane followed by
#                                               one single measurement (self-checks and sampled
#                                               generation, decoding with command buffers, the
#                                               unrolled 1.5b sweep, the split-scan step)
#   scripts/gpu-paper.sh BUNDLE_DIR latency-total  the equal-total dense Mambas of the 1.5b and
#                                               2.8b families, one per GPU, up to MAX_LEN 4096;
#                                               with EXTRA=1 also the decode step's kernels under
#                                               Nsight Compute and the unrolled 1.5b dense Mamba
#   scripts/gpu-paper.sh BUNDLE_DIR owed        on a 4-GPU host: the 1.5b step on 1 and on 2 GPUs
#                                               side by side, the MoE and scan variants
#   scripts/gpu-paper.sh BUNDLE_DIR decode      on a 4-GPU host: 1.5b decoding at 1, 4 and 16
#                                               steps per call without and with command
#                                               buffers, the unrolled latency sweep of the Mamba
#                                               models, self-checks, sampled generation, the
#                                               2048-token step with the scan in pieces
#   scripts/gpu-paper.sh BUNDLE_DIR compile     the 2048-token step compiled four ways, one per
#                                               GPU: as is, with the scan in 8K-token pieces, with
#                                               the fusion autotuner off, with autotuning off
#                                               (scripts/gpu-diagnose.sh step2048*); then the
#                                               self-checks, sampled generation at 1.5b and the
#                                               decode kernel counts
#   scripts/gpu-paper.sh BUNDLE_DIR rows        on a 4-GPU host: 1.5b decoding with the step's
#                                               products padded to two rows (kernel counts,
#                                               decode benchmark, BlackMamba latency sweep), two
#                                               sequences decoded together, self-checks, and the
#                                               equal-total dense Mambas of experiment 3
#   scripts/gpu-paper.sh BUNDLE_DIR scaling     on a 4-GPU host: the 1.5b step data-parallel on two
#                                               GPUs at 4 sequences per GPU (weak scaling) and on
#                                               one, and the small step, with the current defaults
#   scripts/gpu-paper.sh BUNDLE_DIR decode-layout  on a 4-GPU host: 1.5b decoding with the
#                                               steps reading transposed weight copies (kernel
#                                               counts, benchmark, latency sweeps), with XLA's
#                                               fusion autotuner off, the scan variants, the
#                                               self-checks, and the 2.8b equal-total latency
#   scripts/gpu-paper.sh BUNDLE_DIR decode-one  on one GPU, one after another: the 1.5b decode
#                                               step (one step per call) as is, reading the
#                                               transposed copies, and reading them with the norm
#                                               gains folded in (DECODE_CASES; kernel counts, the
#                                               step's optimised HLO), then the scan variants at
#                                               2048 tokens unless SCAN=0 (the 2026-11-28 run:
#                                               DECODE_CASES="decode decode-t decode-fa0
#                                               decode-t-fa0")
#   scripts/gpu-paper.sh BUNDLE_DIR latency-one on one GPU: the decode benchmark at UNROLL (default
#                                               4) steps per call with BASE_WEIGHTS (default
#                                               inout, the [in, out] weights) and with
#                                               STEP_WEIGHTS (default transposed), then the
#                                               1.5B BlackMamba latency sweep with STEP_WEIGHTS at
#                                               UNROLL steps per call, with XLA_STEP_FLAGS if set
#                                               (the 2026-11-28 run used UNROLL=16)
#   scripts/gpu-paper.sh BUNDLE_DIR latency-best on one GPU: experiment 3 with every architecture
#                                               at the fastest settings measured (default: the
#                                               folded step with step_fuse residual, resident,
#                                               8 steps per call), ARCHS one after another, merged
#   scripts/gpu-paper.sh BUNDLE_DIR total-2.8b  on one GPU: the 2.8b dense Mamba at equal total
#                                               parameters to MAX_LEN (default 4096) tokens,
#                                               REPS (default 2) passes, its result saved after
#                                               every pass
#   scripts/gpu-paper.sh BUNDLE_DIR total-zeroshot  on one GPU: experiment 1's dense Mamba at
#                                               equal total parameters with its zero-shot tasks
#                                               (EVALS), resumable: run it again on the same
#                                               machine to finish a run cut by its limit
#   scripts/gpu-paper.sh BUNDLE_DIR loss-1.5b   on a 4-GPU host: the first training steps of 1.5b
#                                               on one GPU and on two, their losses compared, and
#                                               the 2.8b equal-total dense Mamba to 2048 tokens
#   scripts/gpu-paper.sh BUNDLE_DIR loss-two    on a 2-GPU host: the loss-1.5b comparison, one GPU
#                                               then two, one after the other (LOSS_DEVICES,
#                                               default "1 2"; LOSS_LIMIT per run, default 280)
#   scripts/gpu-paper.sh BUNDLE_DIR loss-experts on a 2-GPU host: loss-two's runs side by side,
#                                               then expert parallelism (gpu-multi.sh experts)
#   scripts/gpu-paper.sh BUNDLE_DIR one-owed    on one GPU: the decoder self-check and
#                                               generation with its warm-up (BM_TEST_RUN: the
#                                               bm tests it names first)
#   scripts/gpu-paper.sh BUNDLE_DIR two-owed    on a 2-GPU host: loss-two's two-GPU run, then
#                                               latency-best on GPU 0 beside generation and the
#                                               GPU checks on GPU 1
#   scripts/gpu-paper.sh BUNDLE_DIR finish      on a 4-GPU host: data-parallel training on GPUs 0
#                                               and 1, the dense Mamba at equal total parameters
#                                               alone on GPU 2, the MoE and 2048-token step
#                                               benchmarks on GPU 3
#
# On an H200 the training phase's lane 2 (dense Mamba at equal total parameters, 41 Mamba
# blocks) needs about 540 s, some five minutes of it compiling, so it has its own limit
# (TOTAL_LIMIT, default 560 s) and skips the zero-shot tasks; run with LIMIT=450 so that the
# other lanes leave time for the merge within a 10-minute job. (The 2026-11-28 results trained
# it in the finish phase instead and merged its lane1/training.json into the training phase's
# result with `blackmamba experiment training -merge`.)
#
# Everything lands in OUT (default ./gpu-out) and is packed into OUT/paper-PHASE.tar.xz, the
# HLO dumps (hlo-*.tar.xz) left out; with PACK_ONLY=1 only the archives stay in OUT.
# Environment: SIZE (the training experiment's -size, default gpu; cpu-smoke tries the script
# on a machine without a GPU), TOKENS (training tokens per run, default 5000000 at size gpu), LIMIT (seconds per lane,
# default 480), FAMILY (inference: the preset family, default 1.5b; tiny tries it on a CPU),
# MAX_LEN and REPS (latency, default 16384 and 2), UNROLL (latency and decode: greedy steps per
# executable call), EVAL_LIMIT (PIQA examples, 0 = all), EVALS (folder of the zero-shot
# task files, for the inference phase's PIQA run and, when set, the training runs' zero-shot
# scores), DP_PHASES (multi: gpu-multi.sh phases, default "small test"; the small preset's step
# at a global batch of SMALL_BATCH x SMALL_SEQ, default 32 x 512, whose compilation takes about
# a minute, where 2048-token sequences take about four).
set -uo pipefail
bundle="$(cd "$1" && pwd)"
phase="$2"
out="${OUT:-$PWD/gpu-out}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run="$bundle/run.sh"
corpus="${CORPUS:-data/corpus-12m}"
limit="${LIMIT:-480}"
# The training experiment's -size (SIZE, default gpu) and its -tokens flag: TOKENS, by default
# 5M tokens per run at size gpu, the size's own budget otherwise.
size="${SIZE:-gpu}" tokens=""
[[ "$size" == gpu || -n "${TOKENS:-}" ]] && tokens="-tokens ${TOKENS:-5000000}"
mkdir -p "$out"
export BLACKMAMBA_GPU_MEMORY=grow
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv >"$out/gpus.csv" 2>&1 || true
# generate PRESET prints the command line of the generation timing: 256 tokens after a fixed
# prompt, random weights of PRESET, greedy unless flags are appended.
generate() {
	local prompt="The BlackMamba architecture combines state-space models with a mixture of experts, so that"
	echo "timeout -k 10 90 $run blackmamba generate -random $1 -prompt '$prompt' -max-tokens 256 -stop-eos=false"
}

# latency_lanes FAMILY AFTER0 AFTER1 AFTER2 AFTER3 sweeps the family's four architectures, one
# per GPU (BlackMamba, dense Mamba, Transformer, Transformer-MoE), lane i's sweep followed by the
# shell text AFTERi (empty, or starting with "; "), then merges the four results into
# OUT/latency-FAMILY.json with its figures in OUT/plots-latency-FAMILY.
latency_lanes() {
	local f="$1"
	local lat="timeout -k 10 $limit $run blackmamba latency -family $f -max-len ${MAX_LEN:-16384} -reps ${REPS:-2} -unroll ${UNROLL:-1}"
	"$here/gpu-lanes.sh" \
		"$lat -archs $f -out \$OUT/latency.json -plots \$OUT/plots$2" \
		"$lat -archs $f-mamba -out \$OUT/latency.json -plots \$OUT/plots$3" \
		"$lat -archs $f-transformer -out \$OUT/latency.json -plots \$OUT/plots$4" \
		"$lat -archs $f-transformer-moe -out \$OUT/latency.json -plots \$OUT/plots$5"
	local parts
	parts=$(ls "$out"/lane[0-3]/latency.json 2>/dev/null | paste -sd, -)
	if [[ -n "$parts" ]]; then
		"$run" blackmamba latency -merge "$parts" -out "$out/latency-$f.json" -plots "$out/plots-latency-$f" 2>&1 | tee "$out/latency-merge.log"
	fi
}

# loss_train prints the command line of the loss comparison's training run at 1.5b: the first
# LOSS_STEPS (default 6) steps at a global batch of 4 x LOSS_SEQ (default 2048) in LOSS_DTYPE
# (default: the GPU's bfloat16), seed 1; append -devices N -dir DIR.
loss_train() {
	echo "$run blackmamba train -config 1.5b -corpus $corpus -steps ${LOSS_STEPS:-6} -batch 4 -seq ${LOSS_SEQ:-2048} -log-every 1 -eval-batches 1 -seed 1 ${LOSS_DTYPE:+-dtype $LOSS_DTYPE}"
}
# no_tf32_float32 turns TF32 off (cuBLAS, and XLA's Triton GEMMs) when LOSS_DTYPE is float32:
# its rounding, about 1e-3 per product, would otherwise be what differs between two runs.
no_tf32_float32() {
	xla_flags0="${XLA_FLAGS:-}"
	if [[ "${LOSS_DTYPE:-}" == float32 ]]; then
		export NVIDIA_TF32_OVERRIDE=0
		export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false"
	fi
}

case "$phase" in
training)
	zs=""
	[[ -n "${EVALS:-}" ]] && zs="-zero-shot all -zero-shot-data $EVALS -zero-shot-limit ${EVAL_LIMIT:-500}"
	exp="timeout -k 10 $limit $run blackmamba experiment training -size $size $tokens -corpus $corpus $zs"
	# Lanes balanced by measured speed on an H200 at 16 x 512 (BlackMamba 93K tokens/s, dense
	# Mamba 124K, Transformer 346K): the slow dense Mamba at equal total parameters alone.
	"$here/gpu-lanes.sh" \
		"$exp -archs blackmamba,-mamba -ablation=false -workdir /tmp/runs0 -out \$OUT/training.json -plots \$OUT/plots" \
		"$exp -archs -transformer,-transformer-moe -ablation-routings switch -workdir /tmp/runs1 -out \$OUT/training.json -plots \$OUT/plots" \
		"${exp/timeout -k 10 $limit /timeout -k 10 ${TOTAL_LIMIT:-560} } -archs -mamba-total -ablation=false -zero-shot= -workdir /tmp/runs2 -out \$OUT/training.json -plots \$OUT/plots" \
		"$exp -archs none -ablation-routings sinkhorn-vanilla,argmax -workdir /tmp/runs3 -out \$OUT/training.json -plots \$OUT/plots"
	parts=$(ls "$out"/lane*/training.json 2>/dev/null | paste -sd, -)
	if [[ -n "$parts" ]]; then
		"$run" blackmamba experiment training -merge "$parts" -out "$out/training.json" -plots "$out/plots-training" 2>&1 | tee "$out/merge.log"
		"$run" blackmamba experiment balance -plot-only -in "$out/training.json" -plots "$out/plots-balance" 2>&1 | tee "$out/balance.txt"
	fi
	;;
inference)
	f="${FAMILY:-1.5b}"
	lat="timeout -k 10 $limit $run blackmamba latency -family $f -max-len ${MAX_LEN:-16384} -reps ${REPS:-2}"
	rest="true"
	if [[ -n "${EVALS:-}" ]]; then
		rest="timeout -k 10 300 $run blackmamba eval -random $f -tasks piqa -data $EVALS -limit ${EVAL_LIMIT:-0} -out \$OUT/eval-piqa-$f.json >\$OUT/eval-piqa-$f.log 2>&1"
	fi
	gen="$(generate "$f")"
	"$here/gpu-lanes.sh" \
		"$lat -archs $f,$f-mamba -out \$OUT/latency.json -plots \$OUT/plots" \
		"$lat -archs $f-transformer -out \$OUT/latency.json -plots \$OUT/plots" \
		"$lat -archs $f-transformer-moe -out \$OUT/latency.json -plots \$OUT/plots" \
		"$rest; $gen >\$OUT/generate-greedy.log 2>&1; $gen -temperature 0.8 -top-p 0.95 >\$OUT/generate-sampled.log 2>&1"
	parts=$(ls "$out"/lane[012]/latency.json 2>/dev/null | paste -sd, -)
	if [[ -n "$parts" ]]; then
		"$run" blackmamba latency -merge "$parts" -out "$out/latency.json" -plots "$out/plots-latency" 2>&1 | tee "$out/latency-merge.log"
	fi
	;;
latency)
	# Experiment 3 alone for FAMILY (default 2.8b), one architecture per GPU, so that the larger
	# family's four sweeps fit the time limit.
	latency_lanes "${FAMILY:-2.8b}" "" "" "" ""
	;;
latency-checks)
	# Experiment 3 for FAMILY (default 2.8b), one architecture per GPU as in the latency phase,
	# each lane followed by one single measurement: the self-checks and sampled 1.5b generation
	# (GPU 0), 1.5b decoding with command buffers at 1 and 16 steps per call (GPU 1), the 1.5b
	# BlackMamba sweep to 4096 tokens at 16 steps per call (GPU 2), the 2048-token step with the
	# scan in 8K-token pieces (GPU 3). No HLO dumps.
	gen="$(generate 1.5b) -temperature 0.8 -top-p 0.95"
	latency_lanes "${FAMILY:-2.8b}" \
		"; timeout -k 10 150 $run blackmamba selfcheck >\$OUT/selfcheck.log 2>&1; $gen >\$OUT/generate-sampled.log 2>&1" \
		"; DUMP=0 DECODE_UNROLL=1,16 LIMIT=${DECODE_LIMIT:-240} $here/gpu-diagnose.sh $bundle decode-cmdbuf" \
		"; timeout -k 10 ${UNROLL_LIMIT:-180} $run blackmamba latency -family 1.5b -archs 1.5b -unroll 16 -max-len 4096 -reps 2 -out \$OUT/latency-unroll.json -plots \$OUT/plots-unroll" \
		"; DUMP=0 LIMIT=${COMPILE_LIMIT:-150} $here/gpu-diagnose.sh $bundle step2048-split"
	;;
latency-total)
	# Dense Mamba at BlackMamba's total parameters, 1.5b-mamba-total (148 blocks) and
	# 2.8b-mamba-total (176 blocks), one per GPU: decoding is bound by per-block overhead, about
	# five times BlackMamba's per token, so the sweep stops at MAX_LEN (default 4096). On an
	# H200 (2026-11-28) neither finished its warm-up (random weights, compiling the prefill and
	# step graphs) within LIMIT=400 s: run it with LIMIT near 560 and nothing else in the job.
	for f in 1.5b 2.8b; do
		echo "timeout -k 10 $limit $run blackmamba latency -family $f -archs $f-mamba-total -max-len ${MAX_LEN:-4096} -reps ${REPS:-2} -out \$OUT/latency-total-$f.json -plots \$OUT/plots-$f"
	done >"$out/lanes.txt"
	if [[ "${EXTRA:-0}" == 1 ]]; then
		# Two more lanes: the decode step's kernels timed by Nsight Compute, and the 1.5b dense
		# Mamba sweep at 16 greedy steps per call to 4096 tokens.
		echo "LIMIT=${NCU_LIMIT:-400} $here/gpu-diagnose.sh $bundle decode-ncu"
		echo "timeout -k 10 ${UNROLL_LIMIT:-240} $run blackmamba latency -family 1.5b -archs 1.5b-mamba -unroll 16 -max-len 4096 -reps 2 -out \$OUT/latency-unroll.json -plots \$OUT/plots-unroll"
	fi >>"$out/lanes.txt"
	mapfile -t lanes <"$out/lanes.txt"
	"$here/gpu-lanes.sh" "${lanes[@]}"
	;;
compile)
	# Where the 2048-token step's compilation time goes: the step as it is, with the scan split
	# into pieces of 8K tokens, and with one XLA option changed, one per GPU
	# (scripts/gpu-diagnose.sh step2048*), without HLO dumps. After it, each GPU runs one more
	# single measurement: the self-checks (the decoder against the parallel forward among
	# them), sampled generation at 1.5b (temperature and top-p), and the decode step's kernel
	# counts without and with command buffers.
	d="DUMP=0 LIMIT=${COMPILE_LIMIT:-300} $here/gpu-diagnose.sh $bundle"
	gen="$(generate 1.5b) -temperature 0.8 -top-p 0.95"
	"$here/gpu-lanes.sh" \
		"$d step2048; timeout -k 10 150 $run blackmamba selfcheck >\$OUT/selfcheck.log 2>&1" \
		"$d step2048-split; $gen >\$OUT/generate-sampled.log 2>&1" \
		"$d step2048-fa0; LIMIT=${DECODE_LIMIT:-140} $here/gpu-diagnose.sh $bundle decode" \
		"$d step2048-at0; LIMIT=${DECODE_LIMIT:-140} $here/gpu-diagnose.sh $bundle decode-cmdbuf"
	;;
owed)
	# The remaining single measurements in one 4-GPU job: the 1.5b training step on one GPU
	# (GPU 0, then the default scan at T = 8192) and data-parallel on two (GPUs 1 and 2) side by
	# side, as each compiles for about five minutes; the MoE block with its dispatch block sizes
	# and the scan variants at T = 2048 (GPU 3).
	"$here/gpu-lanes.sh" \
		"0: COUNTS=1 BIG_LIMIT=${BIG_LIMIT:-330} $here/gpu-multi.sh $bundle 1.5b; SCAN_SHAPES=8192 $here/gpu-bench.sh $bundle scan" \
		"1,2: COUNTS=2 BIG_LIMIT=${BIG_LIMIT:-330} $here/gpu-multi.sh $bundle 1.5b" \
		"3: ROUTER=0 $here/gpu-bench.sh $bundle moe; SCAN_SHAPES=2048 SCAN_LIMIT=${SCAN_LIMIT:-270} SCAN_VARIANTS=${SCAN_VARIANTS:-all} $here/gpu-bench.sh $bundle scan"
	;;
decode)
	# Batch-1 decoding of the 1.5b preset, one GPU each: the step's kernel counts and ms per
	# token at DECODE_UNROLL greedy steps per call (default 1,4,16), without (GPU 0) and with
	# (GPU 1) command buffers for every kind of kernel; the latency sweep of BlackMamba and dense
	# Mamba at UNROLL steps per call (default 16, GPU 2); the self-checks (the decoder against the
	# parallel forward among them), sampled 1.5b generation and the 2048-token step with the
	# scan in 8K-token pieces (GPU 3).
	u="${DECODE_UNROLL:-1,4,16}"
	gen="$(generate 1.5b) -temperature 0.8 -top-p 0.95"
	"$here/gpu-lanes.sh" \
		"DECODE_UNROLL=$u LIMIT=${DECODE_LIMIT:-400} $here/gpu-diagnose.sh $bundle decode" \
		"DECODE_UNROLL=$u LIMIT=${DECODE_LIMIT:-400} $here/gpu-diagnose.sh $bundle decode-cmdbuf" \
		"timeout -k 10 $limit $run blackmamba latency -family 1.5b -archs 1.5b,1.5b-mamba -unroll ${UNROLL:-16} -max-len ${MAX_LEN:-16384} -reps ${REPS:-2} -out \$OUT/latency-unroll.json -plots \$OUT/plots" \
		"timeout -k 10 150 $run blackmamba selfcheck >\$OUT/selfcheck.log 2>&1; $gen >\$OUT/generate-sampled.log 2>&1; DUMP=0 LIMIT=${COMPILE_LIMIT:-270} $here/gpu-diagnose.sh $bundle step2048-split"
	;;
rows)
	# Batch-1 decoding with the step's weight products padded to two rows (Config.StepRows),
	# which keeps them matrix multiplications where XLA rewrites single-row products, on a
	# 4-GPU host: the 1.5b step's kernel counts with the padding (HLO dumps on), then the 1.5b
	# BlackMamba latency sweep padded at 16 steps per call (GPU 0); the decode benchmark at 16
	# steps per call without and with the padding, two sequences decoded together, and the
	# self-checks, which check the padded decoder too (GPU 1); the equal-total dense Mambas of
	# the latency-total phase (GPUs 2 and 3, TOTAL_LIMIT, default 560 s).
	lat="$run blackmamba latency -family 1.5b -archs 1.5b -unroll ${UNROLL:-16} -step-rows 2 -max-len ${MAX_LEN:-16384} -reps ${REPS:-2}"
	tot="timeout -k 10 ${TOTAL_LIMIT:-560} $run blackmamba latency -archs"
	"$here/gpu-lanes.sh" \
		"DECODE_STEP_ROWS=2 LIMIT=${DIAG_LIMIT:-180} $here/gpu-diagnose.sh $bundle decode; timeout -k 10 ${ROWS_LAT_LIMIT:-330} $lat -out \$OUT/latency-rows.json -plots \$OUT/plots-rows" \
		"DECODE_STEP_ROWS=0,2 DECODE_UNROLL=16 DECODE_LIMIT=${DECODE_LIMIT:-280} $here/gpu-bench.sh $bundle decode; mv \$OUT/bench-decode-1.5b.json \$OUT/bench-decode-rows.json; mv \$OUT/decode-1.5b.log \$OUT/decode-rows.log; DECODE_BATCH=2 DECODE_LIMIT=150 $here/gpu-bench.sh $bundle decode; timeout -k 10 ${CHECK_LIMIT:-200} $run blackmamba selfcheck >\$OUT/selfcheck.log 2>&1" \
		"$tot 1.5b-mamba-total -family 1.5b -max-len ${TOTAL_MAX_LEN:-4096} -reps 2 -out \$OUT/latency-total-1.5b.json -plots \$OUT/plots-1.5b" \
		"$tot 2.8b-mamba-total -family 2.8b -max-len ${TOTAL_MAX_LEN:-4096} -reps 2 -out \$OUT/latency-total-2.8b.json -plots \$OUT/plots-2.8b"
	;;
scaling)
	# The training steps with the current defaults, side by side on a 4-GPU host: the 1.5b step
	# data-parallel on GPUs 0 and 1 at a global batch of 8 x 2048 (4 sequences per GPU, the
	# per-GPU batch of the one-GPU step: weak scaling), the 1.5b step on one GPU at 4 x 2048
	# (GPU 2), the small step at 8 x 2048 in bfloat16 (GPU 3).
	"$here/gpu-lanes.sh" \
		"0,1: COUNTS=2 BIG_BATCH=8 BIG_LIMIT=${BIG_LIMIT:-540} $here/gpu-multi.sh $bundle 1.5b" \
		"2: COUNTS=1 BIG_LIMIT=${BIG_LIMIT:-540} $here/gpu-multi.sh $bundle 1.5b" \
		"3: TRAIN_SMALL_DTYPES=bfloat16 TRAIN_SMALL_LIMIT=${TRAIN_SMALL_LIMIT:-540} $here/gpu-bench.sh $bundle train-small"
	;;
decode-layout)
	# Where the batch-1 decode step's time goes, on a 4-GPU host, one GPU each: the 1.5b step
	# reading transposed weight copies, with its kernel counts (HLO dumps on), then the 1.5B
	# BlackMamba and dense Mamba latency sweeps with them at 16 steps per call (GPU 0); the step
	# with XLA's fusion autotuner off, HLO dumps on, then the scan variants at chunk 16 (the
	# log-depth across-chunk scan with the cached link among them) and the self-checks, whose
	# decoder check covers the padded and transposed steps (GPU 1); the decode benchmark at 1 and 16
	# steps per call with the [in, out] weights and the transposed copies (GPU 2); the 2.8b dense
	# Mamba at equal total parameters to 4096 tokens, whose warm-up no longer compiles a prefill
	# graph (GPU 3). (The Transformers at 16 steps per call compile a 16-step graph per KV-cache
	# length, some ten per architecture: a job of their own.)
	"$here/gpu-lanes.sh" \
		"LIMIT=${DIAG_LIMIT:-180} $here/gpu-diagnose.sh $bundle decode-t; timeout -k 10 ${T_LAT_LIMIT:-360} $run blackmamba latency -family 1.5b -archs 1.5b,1.5b-mamba -unroll 16 -step-transposed -max-len ${MAX_LEN:-16384} -reps 2 -out \$OUT/latency-transposed.json -plots \$OUT/plots-transposed" \
		"LIMIT=${DIAG_LIMIT:-180} $here/gpu-diagnose.sh $bundle decode-fa0; SCAN_SHAPES=2048 SCAN_VARIANTS=quick SCAN_LIMIT=${SCAN_LIMIT:-240} $here/gpu-bench.sh $bundle scan; timeout -k 10 ${CHECK_LIMIT:-200} $run blackmamba selfcheck >\$OUT/selfcheck.log 2>&1" \
		"DECODE_STEP_WEIGHTS=inout,transposed DECODE_UNROLL=1,16 DECODE_LIMIT=${DECODE_LIMIT:-500} $here/gpu-bench.sh $bundle decode" \
		"timeout -k 10 ${TOTAL_LIMIT:-550} $run blackmamba latency -family 2.8b -archs 2.8b-mamba-total -max-len 4096 -reps 2 -out \$OUT/latency-total-2.8b.json -plots \$OUT/plots-2.8b"
	;;
decode-one)
	# The single-GPU form of the decode-layout phase's measurements of the step, one after
	# another (about a minute each), then the scan variants (unless SCAN=0).
	# shellcheck disable=SC2086
	LIMIT=${DIAG_LIMIT:-140} "$here/gpu-diagnose.sh" "$bundle" ${DECODE_CASES:-decode decode-t decode-tn}
	if [[ "${SCAN:-1}" != 0 ]]; then
		SCAN_SHAPES=2048 SCAN_VARIANTS=quick SCAN_LIMIT=${SCAN_LIMIT:-180} "$here/gpu-bench.sh" "$bundle" scan
	fi
	;;
latency-one)
	# The unrolled decode step (UNROLL steps per call) with the weights in BASE_WEIGHTS' layout
	# (default inout: as stored) and with STEP_WEIGHTS, then the 1.5B BlackMamba sweep with
	# STEP_WEIGHTS (XLA_STEP_FLAGS, e.g. the fusion autotuner off, apply to both).
	w="${STEP_WEIGHTS:-transposed}" base="${BASE_WEIGHTS:-inout}"
	XLA_FLAGS="${XLA_STEP_FLAGS:-}" DECODE_STEP_WEIGHTS="$([[ $w == "$base" ]] && echo "$base" || echo "$base,$w")" DECODE_UNROLL="${UNROLL:-4}" DECODE_LIMIT=${DECODE_LIMIT:-270} "$here/gpu-bench.sh" "$bundle" decode
	XLA_FLAGS="${XLA_STEP_FLAGS:-}" timeout -k 10 "${T_LAT_LIMIT:-270}" "$run" blackmamba latency -family 1.5b -archs 1.5b -unroll "${UNROLL:-4}" -step-weights "$w" -max-len "${MAX_LEN:-16384}" -reps "${REPS:-2}" -out "$out/latency-1.5b-$w.json" -plots "$out/plots-1.5b-$w" >"$out/latency-1.5b-$w.log" 2>&1
	;;
latency-best)
	# Experiment 3 on one GPU with every architecture at the step settings that measured fastest
	# for BlackMamba: STEP_WEIGHTS (default folded) and UNROLL steps per call (default 1 since
	# the resident calls are launched ahead of the device; 8 before 2026-11-29-pipeline/), with
	# the folded step's STEP_FUSE rearrangements (default auto: experiments.DefaultStepFuse, residual
	# before 2026-11-29-ring/; set empty for none), and
	# unless RESIDENT=0 the resident loop (latency -resident: bm.GreedyDecoder.GenerateResident;
	# the 2026-11-29 runs before 2026-11-29-resident/ used UNROLL=4, RESIDENT=0; SYNC_CALLS=1
	# waits for each call instead of launching the calls ahead, as every run before
	# 2026-11-29-pipeline/ did). The
	# architectures of ARCHS (default the FAMILY's four; FAMILY defaults to the family of the
	# first of ARCHS, else 1.5b; latency refuses an architecture of another family) run one after
	# another, each in its own process limited to ARCH_LIMIT (default 280) seconds and saved
	# after every pass; the results present are then merged into OUT/latency-FAMILY-best.json
	# with its figures. Two jobs of two architectures each fit the 10-minute limit, e.g.
	# ARCHS="1.5b 1.5b-mamba", then ARCHS="1.5b-transformer 1.5b-transformer-moe"; merge the two
	# jobs' results with `blackmamba latency -merge`.
	first="${ARCHS:-1.5b}"
	first="${first%% *}"
	f="${FAMILY:-${first%%-*}}"
	fuse="${STEP_FUSE-auto}"
	for a in ${ARCHS:-$f $f-mamba $f-transformer $f-transformer-moe}; do
		echo "=== latency $a (limit ${ARCH_LIMIT:-280}s)" | tee -a "$out/summary.txt"
		timeout -k 10 "${ARCH_LIMIT:-280}" "$run" blackmamba latency -family "$f" -archs "$a" -unroll "${UNROLL:-1}" -step-weights "${STEP_WEIGHTS:-folded}" ${fuse:+-step-fuse "$fuse"} $([[ "${RESIDENT:-1}" == 1 ]] && echo -resident) $([[ "${SYNC_CALLS:-0}" == 1 ]] && echo -sync-calls) -max-len "${MAX_LEN:-16384}" -reps "${REPS:-2}" -out "$out/latency-best-$a.json" -plots "$out/plots-best-$a" >"$out/latency-best-$a.log" 2>&1
		echo "--- rc=$?" | tee -a "$out/summary.txt"
	done
	parts=$(ls "$out"/latency-best-*.json 2>/dev/null | paste -sd, -)
	if [[ -n "$parts" ]]; then
		"$run" blackmamba latency -merge "$parts" -out "$out/latency-$f-best.json" -plots "$out/plots-latency-$f-best" 2>&1 | tee "$out/latency-merge.log"
	fi
	;;
loss-experts)
	# On a 2-GPU host: loss-two's comparison with both runs side by side, the one-GPU run on GPU 1
	# and the data-parallel one on GPUs 0 and 1 (they fit together; sharing a GPU changes no
	# result), each within LOSS_LIMIT (default 300) s, TF32 off in float32; then expert
	# parallelism on both GPUs (scripts/gpu-multi.sh experts: the data-parallel tests, among
	# them the run with split variables, and the small step with the experts replicated and
	# split).
	no_tf32_float32
	tr="timeout -k 10 ${LOSS_LIMIT:-300} $(loss_train)"
	OUT="$out" "$here/gpu-lanes.sh" \
		"1: $tr -devices 1 -dir /tmp/loss-1dev >\$OUT/train-1dev.log 2>&1; cp /tmp/loss-1dev/metrics.jsonl \$OUT/loss-1.5b-1dev.jsonl" \
		"0,1: $tr -devices 2 -dir /tmp/loss-2dev >\$OUT/train-2dev.log 2>&1; cp /tmp/loss-2dev/metrics.jsonl \$OUT/loss-1.5b-2dev.jsonl"
	"$run" blackmamba compare-runs -tol 1e-2 "$out/lane0/loss-1.5b-1dev.jsonl" "$out/lane1/loss-1.5b-2dev.jsonl" 2>&1 | tee "$out/loss-compare-1.5b.log"
	(unset NVIDIA_TF32_OVERRIDE; export XLA_FLAGS="$xla_flags0"; OUT="$out/experts" "$here/gpu-multi.sh" "$bundle" experts)
	;;
one-owed)
	# On one GPU, the correctness of the decoding paths changed since the last GPU checks: the
	# decoder self-check (every step layout, the folded batch-1 path and its step_fuse
	# rearrangements among them; it prints each part as it ends, and needs more than 335 s on an
	# H200 with its 15 variants per architecture; SELFCHECK_LIMIT, default 450 s), then greedy generation of a random-weight 1.5b model
	# with -unroll 8 (the warm-up on, the resident steps, the tokens copied at most every 20 ms),
	# the same with the tokens copied after every call (-stream-interval 0), and with
	# -step-fuse residual,router at one step per call, each within its own limit; with
	# BM_TEST_RUN set, the bm tests it names first (TF32 off, within BM_TEST_LIMIT, default
	# 220 s); SELFCHECK=0 skips the self-check (the same check as the bm test
	# TestDecoderMatchesForward). Generation needs the tokenizer (data/tokenizer) beside the bundle.
	if [[ -n "${BM_TEST_RUN:-}" ]]; then
		BM_TEST_LIMIT="${BM_TEST_LIMIT:-220}" "$here/gpu-bench.sh" "$bundle" tests
	fi
	if [[ "${SELFCHECK:-1}" == 1 ]]; then
		(export NVIDIA_TF32_OVERRIDE=0; timeout -k 10 "${SELFCHECK_LIMIT:-450}" "$run" blackmamba selfcheck -checks decode >"$out/selfcheck-decode.log" 2>&1; echo "--- selfcheck -checks decode rc=$?" | tee -a "$out/summary.txt")
	fi
	gen="$(generate 1.5b)"
	bash -c "$gen -unroll 8" >"$out/generate-greedy-unroll8.log" 2>&1
	echo "--- generate -unroll 8 rc=$?" | tee -a "$out/summary.txt"
	bash -c "$gen -unroll 8 -stream-interval 0" >"$out/generate-greedy-unroll8-every-call.log" 2>&1
	echo "--- generate -unroll 8 -stream-interval 0 rc=$?" | tee -a "$out/summary.txt"
	bash -c "$gen -step-fuse residual,router" >"$out/generate-greedy-router.log" 2>&1
	echo "--- generate -step-fuse residual,router rc=$?" | tee -a "$out/summary.txt"
	;;
two-owed)
	# On a 2-GPU host: the loss-two comparison's data-parallel run (LOSS_DEVICES=2, both GPUs;
	# copy the one-GPU run's loss-1.5b-1dev.jsonl beside it to compare), then side by side
	# latency-best of ARCHS (default "1.5b 1.5b-mamba") on GPU 0, and on GPU 1 greedy generation
	# of a random-weight 1.5b model with generate's defaults followed by the check phase of
	# scripts/gpu-bench.sh (backends, self-checks, the bm tests), each lane within LANE_LIMIT
	# (default 330) seconds.
	PACK_ONLY=0 LOSS_DEVICES=2 OUT="$out/loss" "$0" "$bundle" loss-two
	gen="$(generate 1.5b)"
	OUT="$out" timeout -k 10 "${LANE_LIMIT:-330}" "$here/gpu-lanes.sh" \
		"0: PACK_ONLY=0 ARCHS='${ARCHS:-1.5b 1.5b-mamba}' $0 $bundle latency-best" \
		"1: $gen >\$OUT/generate-greedy.log 2>&1; $here/gpu-bench.sh $bundle check"
	;;
total-zeroshot)
	# On one GPU: experiment 1's dense Mamba at equal total parameters trained as in the
	# training phase, now with its zero-shot tasks (EVALS, EVAL_LIMIT examples each, default
	# 200). Its run directory stays in WORKDIR (default dist/runs-total, inside the checkout)
	# with a checkpoint every CKPT_EVERY steps (default 200; 6 at SIZE=cpu-smoke), so that the
	# same command run again on the same machine after a time limit resumes the run, or only
	# scores it when it had finished (experiment training -resume).
	[[ -n "${EVALS:-}" ]] || { echo "total-zeroshot needs EVALS, the folder of the zero-shot task files" >&2; exit 2; }
	ckpt="${CKPT_EVERY:-200}"
	[[ "$size" == cpu-smoke && -z "${CKPT_EVERY:-}" ]] && ckpt=6
	echo "$(date -u +%FT%TZ) total-zeroshot: workdir ${WORKDIR:-dist/runs-total}, limit ${TOTAL_LIMIT:-560} s" | tee -a "$out/total-zeroshot.log"
	# shellcheck disable=SC2086 # $tokens is empty or one flag with its value
	timeout -k 10 "${TOTAL_LIMIT:-560}" "$run" blackmamba experiment training -size "$size" $tokens -corpus "$corpus" \
		-archs -mamba-total -ablation=false -zero-shot all -zero-shot-data "$EVALS" -zero-shot-limit "${EVAL_LIMIT:-200}" \
		-workdir "${WORKDIR:-dist/runs-total}" -resume -checkpoint-every "$ckpt" \
		-out "$out/training.json" -plots "$out/plots" >>"$out/total-zeroshot.log" 2>&1
	rc=$?
	echo "$(date -u +%FT%TZ) total-zeroshot: exit $rc" | tee -a "$out/total-zeroshot.log"
	;;
total-2.8b)
	timeout -k 10 "${TOTAL_LIMIT:-560}" "$run" blackmamba latency -family 2.8b -archs 2.8b-mamba-total -max-len "${MAX_LEN:-4096}" -reps "${REPS:-2}" -out "$out/latency-total-2.8b.json" -plots "$out/plots-2.8b" >"$out/latency-total-2.8b.log" 2>&1
	;;
loss-1.5b)
	# The first LOSS_STEPS (default 6) steps of `blackmamba train -config 1.5b` at a global batch
	# of 4 x LOSS_SEQ (default 2048) in LOSS_DTYPE (default: the GPU's bfloat16) on one GPU (GPU 0) and data-parallel on two (GPUs 1 and 2), same seed, then
	# their losses compared (compare-runs, relative tolerance 1e-2); on GPU 3 the 2.8b dense
	# Mamba at equal total parameters (176 blocks, warm-up about 450 s) to MAX_LEN (default
	# 2048) tokens, REPS (default 1) passes.
	# LOSS_DTYPE=float32 (with LOSS_SEQ=1024 to fit) separates rounding from a real difference.
	tr="timeout -k 10 ${LOSS_LIMIT:-520} $run blackmamba train -config 1.5b -corpus $corpus -steps ${LOSS_STEPS:-6} -batch 4 -seq ${LOSS_SEQ:-2048} -log-every 1 -eval-batches 1 -seed 1 ${LOSS_DTYPE:+-dtype $LOSS_DTYPE}"
	"$here/gpu-lanes.sh" \
		"0: $tr -devices 1 -dir /tmp/loss-1dev >\$OUT/train-1dev.log 2>&1; cp /tmp/loss-1dev/metrics.jsonl \$OUT/loss-1.5b-1dev.jsonl" \
		"1,2: $tr -devices 2 -dir /tmp/loss-2dev >\$OUT/train-2dev.log 2>&1; cp /tmp/loss-2dev/metrics.jsonl \$OUT/loss-1.5b-2dev.jsonl" \
		"3: timeout -k 10 ${TOTAL_LIMIT:-540} $run blackmamba latency -archs 2.8b-mamba-total -family 2.8b -max-len ${MAX_LEN:-2048} -reps ${REPS:-1} -out \$OUT/latency-total-2.8b.json -plots \$OUT/plots-2.8b"
	"$run" blackmamba compare-runs -tol 1e-2 "$out/lane0/loss-1.5b-1dev.jsonl" "$out/lane1/loss-1.5b-2dev.jsonl" 2>&1 | tee "$out/loss-compare-1.5b.log"
	;;
loss-two)
	# The loss-1.5b comparison on a 2-GPU host (or in two jobs on one): the same training run on
	# one GPU (GPU 0) and data-parallel on two (GPUs 0 and 1), one after the other, for each count
	# in LOSS_DEVICES (default "1 2"), each run limited to LOSS_LIMIT (default 280) seconds; then
	# compare-runs when both logs are in OUT (copy the first job's loss-1.5b-1dev.jsonl there to
	# compare across jobs).
	no_tf32_float32
	tr="timeout -k 10 ${LOSS_LIMIT:-280} $(loss_train)"
	for n in ${LOSS_DEVICES:-1 2}; do
		gpus=0
		[[ "$n" == 2 ]] && gpus=0,1
		echo "=== loss-1.5b on $n GPU(s) ($gpus)" | tee -a "$out/summary.txt"
		CUDA_VISIBLE_DEVICES="$gpus" bash -c "$tr -devices $n -dir /tmp/loss-${n}dev" >"$out/train-${n}dev.log" 2>&1
		echo "--- rc=$?" | tee -a "$out/summary.txt"
		cp "/tmp/loss-${n}dev/metrics.jsonl" "$out/loss-1.5b-${n}dev.jsonl" 2>/dev/null
	done
	if [[ -e "$out/loss-1.5b-1dev.jsonl" && -e "$out/loss-1.5b-2dev.jsonl" ]]; then
		"$run" blackmamba compare-runs -tol 1e-2 "$out/loss-1.5b-1dev.jsonl" "$out/loss-1.5b-2dev.jsonl" 2>&1 | tee "$out/loss-compare-1.5b.log"
	fi
	;;
multi)
	for p in ${DP_PHASES:-small test}; do
		SMALL_BATCH="${SMALL_BATCH:-32}" SMALL_SEQ="${SMALL_SEQ:-512}" "$here/gpu-multi.sh" "$bundle" "$p"
	done
	;;
finish)
	# What a 4-GPU host can still do in one job after training and inference: data-parallel
	# training on GPUs 0 and 1 (as the multi phase), the dense Mamba at BlackMamba's total
	# parameters (41 Mamba blocks, whose step compiles for about five minutes, too long to
	# share a lane of the training phase) on GPU 2, and the MoE and 2048-token step benchmarks
	# on GPU 3. Merge lane1/training.json into the training phase's result with
	# `blackmamba experiment training -merge`.
	"$here/gpu-lanes.sh" \
		"0,1: for p in ${DP_PHASES:-small loss test}; do SMALL_BATCH=${SMALL_BATCH:-32} SMALL_SEQ=${SMALL_SEQ:-512} $here/gpu-multi.sh $bundle \$p; done" \
		"2: timeout -k 10 ${TOTAL_LIMIT:-565} $run blackmamba experiment training -size $size $tokens -corpus $corpus -archs -mamba-total -ablation=false -workdir /tmp/runs2 -out \$OUT/training.json -plots \$OUT/plots" \
		"3: $here/gpu-bench.sh $bundle moe; TRAIN_SMALL_DTYPES=bfloat16 TRAIN_SMALL_LIMIT=${TRAIN_SMALL_LIMIT:-270} $here/gpu-bench.sh $bundle train-small"
	;;
*)
	echo "unknown phase $phase (want training, inference, latency, latency-checks, latency-total, owed, decode, rows, scaling, decode-layout, decode-one, latency-one, latency-best, one-owed, two-owed, total-zeroshot, total-2.8b, loss-1.5b, loss-two, loss-experts, compile, multi or finish)" >&2
	exit 2
	;;
esac
# At most a few files come back from some machines: pack everything into one archive. A phase
# run again into the same OUT writes paper-PHASE-2.tar.xz, -3 and so on: with PACK_ONLY=1 the
# earlier archive holds the only copy of the earlier run's files.
tmp="$(mktemp -d)"
archive="paper-$phase.tar.xz"
for ((i = 2; ; i++)); do
	[[ -e "$out/$archive" ]] || break
	archive="paper-$phase-$i.tar.xz"
done
tar -C "$out" --exclude="paper-*.tar.xz" --exclude="hlo-*.tar.xz" -cJf "$tmp/$archive" . && mv "$tmp/$archive" "$out/"
ls -la "$out/$archive"
# PACK_ONLY=1 leaves only the archives in OUT, for machines that send back few files.
if [[ "${PACK_ONLY:-0}" == 1 ]]; then
	find "$out" -mindepth 1 -not -name 'paper-*.tar.xz' -delete
fi
