#!/usr/bin/env bash
# Runs the paper's experiments on a GPU machine from the bundle (make gpu-bundle) and a corpus
# sample (blackmamba data build -max-tokens 12000000 -out data/corpus-12m), writing results
# JSON, figures and logs under OUT (default ./gpu-out). Run from the repository root.
#
#   scripts/gpu-experiments.sh BUNDLE_DIR training   experiment 1 (four architectures + dense
#                                                    Mamba at equal total) and the routing
#                                                    ablation of experiment 2, in one job
#   scripts/gpu-experiments.sh BUNDLE_DIR balance    experiment 2: BlackMamba with its four
#                                                    training routings and their expert balance
#   scripts/gpu-experiments.sh BUNDLE_DIR latency    experiment 3 at the 1.5B sizes
#   scripts/gpu-experiments.sh BUNDLE_DIR eval       PIQA with a random-weight 1.5b model (the
#                                                    evaluation's runtime at that size); EVALS
#                                                    names the folder of task files (piqa.jsonl)
#   scripts/gpu-experiments.sh BUNDLE_DIR generate   generation speed of a random-weight 1.5b
#                                                    model, greedy and sampled (tokens/s)
#
# eval and generate read the NeoX tokenizer from data/tokenizer.
set -uo pipefail
bundle="$(cd "$1" && pwd)"
phase="$2"
out="${OUT:-$PWD/gpu-out}"
corpus="${CORPUS:-data/corpus-12m}"
mkdir -p "$out"
run="$bundle/run.sh"
export BLACKMAMBA_GPU_MEMORY=grow
case "$phase" in
training)
	# ARCHS selects runs ("blackmamba,-mamba,-transformer,-transformer-moe,-mamba-total");
	# PARALLEL trains that many runs side by side on the GPU;
	# ABLATION=false leaves out the routing ablation; EVALS names a folder of zero-shot task
	# files (a copy of the evaluation sets) to evaluate each trained model on.
	extra=()
	[[ -n "${ARCHS:-}" ]] && extra+=(-archs "$ARCHS")
	[[ -n "${ABLATION:-}" ]] && extra+=(-ablation="$ABLATION")
	[[ -n "${PARALLEL:-}" ]] && extra+=(-parallel "$PARALLEL")
	[[ -n "${EVALS:-}" ]] && extra+=(-zero-shot piqa,arc_easy,arc_challenge,hellaswag,winogrande,lambada,openbookqa \
		-zero-shot-data "$EVALS" -zero-shot-limit "${EVAL_LIMIT:-500}")
	timeout -k 10 "${LIMIT:-560}" "$run" blackmamba experiment training -size gpu -tokens "${TOKENS:-5000000}" -corpus "$corpus" "${extra[@]}" \
		-workdir /tmp/blackmamba-runs -out "$out/training.json" -plots "$out/plots-training" 2>&1 | tee "$out/training.log"
	;;
balance)
	timeout -k 10 "${LIMIT:-560}" "$run" blackmamba experiment balance -size gpu -tokens "${TOKENS:-1000000}" -corpus "$corpus" \
		-workdir /tmp/blackmamba-runs -out "$out/balance.json" -plots "$out/plots-balance" 2>&1 | tee "$out/balance.log"
	;;
latency)
	# One pass per repeat to MAX_LEN tokens per architecture, after about a minute of warm-up each:
	# at 16384 tokens and 3 repeats the four 1.5B architectures need about 15 minutes, so one
	# 10-minute job takes MAX_LEN=8192 REPS=2 (about 7 minutes) or a subset in LAT_ARCHS
	# (comma-separated presets, e.g. "1.5b-transformer,1.5b-transformer-moe").
	lat=()
	[[ -n "${LAT_ARCHS:-}" ]] && lat+=(-archs "$LAT_ARCHS")
	timeout -k 10 "${LIMIT:-560}" "$run" blackmamba latency -family 1.5b -max-len "${MAX_LEN:-16384}" -reps "${REPS:-3}" "${lat[@]}" \
		-out "$out/latency.json" -plots "$out/plots-latency" 2>&1 | tee "$out/latency.log"
	;;
eval)
	if [[ -z "${EVALS:-}" ]]; then
		echo "eval: set EVALS to the folder of zero-shot task files (piqa.jsonl, …)" >&2
		exit 2
	fi
	timeout -k 10 "${LIMIT:-540}" "$run" blackmamba eval -random 1.5b -tasks piqa -data "$EVALS" -limit "${EVAL_LIMIT:-0}" \
		-out "$out/eval-piqa-1.5b.json" 2>&1 | tee "$out/eval-piqa-1.5b.log"
	;;
generate)
	# -stop-eos=false: random weights may pick the end-of-text id early; every run makes 256 tokens.
	prompt="The BlackMamba architecture combines state-space models with a mixture of experts, so that"
	timeout -k 10 "${LIMIT:-240}" "$run" blackmamba generate -random 1.5b -prompt "$prompt" -max-tokens 256 -stop-eos=false \
		2>&1 | tee "$out/generate-1.5b-greedy.log"
	timeout -k 10 "${LIMIT:-240}" "$run" blackmamba generate -random 1.5b -prompt "$prompt" -max-tokens 256 -stop-eos=false \
		-temperature 0.8 -top-p 0.95 2>&1 | tee "$out/generate-1.5b-sampled.log"
	;;
*)
	echo "unknown phase $phase" >&2
	exit 2
	;;
esac
