#!/usr/bin/env bash
# The main job: on-policy distillation of the toy base student from the toy teacher on a CPU, then a
# before/after table of dev and test error rates in 19 languages (runs/demo/report.md).
#   make demo                (= make setup, then this script with the project's .venv)
#   bash scripts/demo.sh     (with the environment already active)
# Starts from the teacher and base student shipped in checkpoints/toy/ (scripts/reproduce_toy.sh
# made them; MADE_BY.json beside each says how). Leaves runs/demo/{teacher,base,opd}/final.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=runs/demo
DATA=data/toy_tts
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # models this small run no faster on more threads
# shellcheck source=scripts/stage.sh
source scripts/stage.sh
require_shipped teacher base
# A finished stage is skipped on the next invocation (a killed demo goes on where it stopped), so outputs
# made from other inputs (an older config, script or checkpoint) would be shown as this demo's: start over.
inputs=$(cat configs/distill/toy.yaml scripts/demo.sh checkpoints/toy/{teacher,base}/model.safetensors | sha256sum | cut -c1-16)
if [ -d "$RUNS" ] && [ "$(cat "$RUNS/inputs" 2>/dev/null)" != "$inputs" ]; then
  echo "== $RUNS was made from other inputs (config, script or checkpoints): starting over"
  rm -rf "$RUNS"
fi
mkdir -p "$RUNS/eval" && echo "$inputs" > "$RUNS/inputs"
started=$(date +%s)

for model in teacher base; do
  stage "copy_$model" "$RUNS/$model/final/model.safetensors" \
    bash -c "mkdir -p $RUNS/$model && cp -r checkpoints/toy/$model $RUNS/$model/final"
done
toy_corpus --pool-only  # OPD reads the pool only; dev and test score the models
# configs/distill/toy.yaml (the default config) starts from checkpoints/toy/ and writes runs/demo/opd; two
# processes (DDP over gloo), one a core, each with half of every update's 60 s of audio.
stage opd "$RUNS/opd/final/model.safetensors" "$PY" -m accelerate.commands.launch \
  --config_file configs/accelerate/ddp.yaml train/distill.py
# Each model on dev and test in one call (--hyps: the report scores every utterance), two at a time.
evaluate() {
  stage "eval_$1" "$RUNS/eval/$1.hyps.jsonl" "$PY" train/evaluate.py --model "$RUNS/$1/final" \
    --manifest "$DATA/dev.jsonl" --manifest "$DATA/test.jsonl" --out "$RUNS/eval/$1.json" --hyps --batch-size 64 \
    --max-new-tokens 160 --device cpu
}
( evaluate base && evaluate opd ) &
scoring=$!
evaluate teacher
wait "$scoring"
echo $(( $(date +%s) - started )) > "$RUNS/wall_times/this_invocation"
"$PY" scripts/toy_report.py --runs "$RUNS"
