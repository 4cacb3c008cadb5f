#!/usr/bin/env bash
# The main job: on-policy distillation of the toy base student from the toy teacher on a CPU, then a
# before/after table of dev error rates in 19 languages (runs/demo/report.md).
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
mkdir -p "$RUNS/eval"
started=$(date +%s)
# shellcheck source=scripts/stage.sh
source scripts/stage.sh

for model in teacher base; do
  if [ ! -f "checkpoints/toy/$model/model.safetensors" ]; then
    echo "checkpoints/toy/$model is missing: bash scripts/reproduce_toy.sh makes it" >&2
    exit 1
  fi
  stage "copy_$model" "$RUNS/$model/final/model.safetensors" \
    bash -c "mkdir -p $RUNS/$model && cp -r checkpoints/toy/$model $RUNS/$model/final"
done
toy_corpus
# configs/distill/toy.yaml (the default config) starts from checkpoints/toy/ and writes runs/demo/opd.
stage opd "$RUNS/opd/final/model.safetensors" "$PY" -m accelerate.commands.launch --num_processes 1 \
  --num_machines 1 --mixed_precision no --dynamo_backend no train/distill.py
for model in teacher base opd; do
  stage "eval_$model" "$RUNS/eval/$model.hyps.jsonl" "$PY" train/evaluate.py --model "$RUNS/$model/final" \
    --manifest "$DATA/dev.jsonl" --out "$RUNS/eval/$model.json" --hyps --language-prompt --batch-size 64 \
    --max-new-tokens 160 --device cpu
done
echo $(( $(date +%s) - started )) > "$RUNS/wall_times/this_invocation"
"$PY" scripts/toy_report.py --runs "$RUNS"
