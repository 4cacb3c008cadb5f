#!/usr/bin/env bash
# The paper's table at toy scale on a CPU: a teacher, a base student, Base+TD, Base+OPD and
# Base+TD+OPD, each evaluated on the toy test split in 19 languages; writes runs/toy/report.md and
# ships the five models to checkpoints/toy/, each with MADE_BY.json.
#   make reproduce-toy                     (= make setup, then this script with the project's .venv)
#   bash scripts/reproduce_toy.sh          (with the environment already active)
#   bash scripts/reproduce_toy.sh opd eval_opd report   (only the stages named; their inputs must exist)
# A stage whose output exists is skipped, so a killed run goes on where it stopped (a killed
# training stage also resumes from its last checkpoint); delete a stage's output to run it again.
# Wall times: runs/toy/wall_times/.
# Models this small run no faster on two threads than on one (measured: the teacher's SFT step
# takes the same time), so every process gets one thread and independent stages run side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=runs/toy  # the configs in configs/toy/ name these paths
DATA=data/toy_tts
export OMP_NUM_THREADS=1
MODELS="teacher base td opd td_opd"
STAGES="corpus tokenizer teacher base pseudo_label td td_opd opd $(for m in $MODELS; do printf 'eval_%s ' "$m"; done)
$(for m in base td opd td_opd; do printf 'diagnose_%s ' "$m"; done) report ship"
ASKED="$*"
for name in $ASKED; do  # a wrong name fails here, before any compute
  [[ " $(echo $STAGES) " == *" $name "* ]] || { echo "unknown stage '$name'; the stages:" $STAGES >&2; exit 2; }
done
mkdir -p "$RUNS/eval"
started=$(date +%s)

# shellcheck source=scripts/stage.sh
source scripts/stage.sh

# Data: the 19-language toy corpus (cached), its training audio split into a labelled half
# (base student) and an unlabelled pool (TD and OPD), and the character vocabulary.
toy_corpus
toy_tokenizer

# The teacher (all labelled audio, larger) and the base student (the labelled half, smaller).
stage teacher "$RUNS/teacher/final/model.safetensors" "$PY" train/sft.py --config configs/toy/teacher.yaml &
stage base "$RUNS/base/final/model.safetensors" "$PY" train/sft.py --config configs/toy/base.yaml &
wait_all

# TD: the teacher transcribes the pool, the base student is fine-tuned on its transcripts.
stage pseudo_label "$RUNS/pseudo_teacher.jsonl" "$PY" train/transcribe.py --model "$RUNS/teacher/final" \
  --manifest "$DATA/train_pool.jsonl" --out "$RUNS/pseudo_teacher.jsonl" --drop-empty --drop-repetitive \
  --language-prompt --batch-size 64 --max-new-tokens 160 --device cpu
# OPD: the base student (and, once TD is done, the TD student) distilled from the teacher on the
# same pool, no labels. TD then TD+OPD on one thread, OPD on the other.
(
  stage td "$RUNS/td/final/model.safetensors" "$PY" train/sft.py --config configs/toy/td.yaml
  stage td_opd "$RUNS/td_opd/final/model.safetensors" "$PY" train/distill.py --config configs/toy/opd.yaml \
    output_dir="$RUNS/td_opd" student.checkpoint="$RUNS/td/final"
) &
stage opd "$RUNS/opd/final/model.safetensors" "$PY" train/distill.py --config configs/toy/opd.yaml &
wait_all

evaluate() {
  stage "eval_$1" "$RUNS/eval/$1.hyps.jsonl" "$PY" train/evaluate.py --model "$RUNS/$1/final" \
    --manifest "$DATA/test.jsonl" --out "$RUNS/eval/$1.json" --hyps --language-prompt --batch-size 64 \
    --max-new-tokens 160 --device cpu
}
evaluate teacher & evaluate base & wait_all
evaluate td & evaluate opd & wait_all
evaluate td_opd
# How the teacher sees each student's own transcripts (what OPD learns from): scripts/opd_diagnostics.py.
mkdir -p "$RUNS/diagnostics"
for model in base td opd td_opd; do
  stage "diagnose_$model" "$RUNS/diagnostics/$model.json" "$PY" scripts/opd_diagnostics.py \
    --student "$RUNS/$model/final" --teacher "$RUNS/teacher/final" --manifest "$DATA/dev.jsonl" --language-prompt \
    --clips 200 --out "$RUNS/diagnostics/$model.json"
done
[ -z "$ASKED" ] && echo $(( $(date +%s) - started )) > "$RUNS/wall_times/this_invocation"
if asked report; then "$PY" scripts/toy_report.py --runs "$RUNS"; fi

# The five models, with what made them beside them (`make demo` starts from the teacher and base).
if asked ship; then
  for model in $MODELS; do
    case $model in
      teacher|base|td|opd) config=(--config "configs/toy/$model.yaml") ;;
      td_opd) config=(--config configs/toy/opd.yaml --override "output_dir=$RUNS/td_opd"
                      --override "student.checkpoint=$RUNS/td/final") ;;
    esac
    "$PY" scripts/ship_toy_model.py "$model" --runs "$RUNS" "${config[@]}"
  done
fi
