#!/usr/bin/env bash
# How much OPD helps as a function of its budget and of where the student starts, at toy scale on a CPU.
#   make toy-curves              (= make setup, then this script with the project's .venv)
#   bash scripts/toy_curves.sh   (with the environment already active)
# Budget: the shipped base student distilled from the shipped teacher for each of $BUDGETS updates, each
# a whole cosine schedule of its own (configs/toy/opd.yaml otherwise). Start: OPD for $START_UPDATES
# updates from each of $STARTS, weak to near the teacher:
#   base_1000  the base recipe (configs/toy/base.yaml) stopped at 1,000 SFT updates instead of 3,000
#   base       the shipped base student (checkpoints/toy/base)
#   td         the shipped Base+TD student (checkpoints/toy/td): the base fine-tuned on the teacher's transcripts
# Every model is scored on the toy test split; runs/toy/curves/curves.md (and .json, .png) says how much
# of its own start's gap to the teacher each run closed. The toy report (scripts/toy_report.py) includes it.
# A stage whose output exists is skipped, so a killed run goes on where it stopped; stages run on two lanes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=runs/toy
CURVES=$RUNS/curves
DATA=data/toy_tts
BUDGETS=${BUDGETS:-300 600 1200 2400 4800}
STARTS=${STARTS:-base_1000 base td}
START_UPDATES=${START_UPDATES:-1200}
export OMP_NUM_THREADS=1

# shellcheck source=scripts/stage.sh
source scripts/stage.sh

start_model() {  # the folder of a start's weights
  if [[ $1 == base || $1 == td ]]; then echo "checkpoints/toy/$1"
  elif [[ $1 =~ ^base_[0-9]+$ ]]; then echo "$CURVES/$1/final"
  else echo "unknown start '$1' in STARTS (known: base_<SFT updates>, base, td)" >&2; return 1
  fi
}
for start in $STARTS; do start_model "$start" > /dev/null; done  # a wrong name fails here, before any compute
for n in $BUDGETS "$START_UPDATES"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "BUDGETS and START_UPDATES take whole numbers of updates, got '$n'" >&2; exit 2; }
done
require_shipped teacher base td
mkdir -p "$CURVES/eval"
toy_corpus
# A weaker base trains with the recipe's character vocabulary (scripts/reproduce_toy.sh's stage), made here
# before either lane starts.
if [[ " $STARTS " == *" base_"* ]]; then toy_tokenizer; fi

evaluate() {  # evaluate NAME MODEL_DIR
  stage "curves_eval_$1" "$CURVES/eval/$1.hyps.jsonl" "$PY" train/evaluate.py --model "$2" \
    --manifest "$DATA/test.jsonl" --out "$CURVES/eval/$1.json" --hyps --batch-size 64 --max-new-tokens 160 --device cpu
}
# opd START UPDATES: a cosine schedule of UPDATES student updates from START, then its test score.
opd() {
  local name="$1+opd_$2" model
  model=$(start_model "$1")
  stage "curves_$name" "$CURVES/$name/final/model.safetensors" "$PY" train/distill.py --config configs/toy/opd.yaml \
    output_dir="$CURVES/$name" student.checkpoint="$model" teacher.checkpoint=checkpoints/toy/teacher \
    max_steps="$2" eval.every="$2" eval.on_start=false checkpoint.every=$(( $2 < 600 ? $2 : 600 ))
  evaluate "$name" "$CURVES/$name/final"
}

# start_run START: a weaker base is trained first (the base recipe, stopped early); then START's score and OPD.
start_run() {
  local start=$1
  if [[ $start == base_* ]]; then
    stage "curves_$start" "$CURVES/$start/final/model.safetensors" "$PY" train/sft.py --config configs/toy/base.yaml \
      output_dir="$CURVES/$start" max_steps="${start#base_}" eval.every="${start#base_}" \
      checkpoint.every=$(( ${start#base_} < 500 ? ${start#base_} : 500 ))
  fi
  evaluate "$start" "$(start_model "$start")"
  opd "$start" "$START_UPDATES"
}

# Two lanes, one core each: every run goes, longest first, to the lane with less work so far (cost in OPD
# updates; an SFT update costs about a third of one). The base's start run is one of the budget runs.
queue=()
for start in $STARTS; do
  [ "$start" = base ] && continue
  cost=$START_UPDATES; [[ $start == base_* ]] && cost=$(( cost + ${start#base_} / 3 ))
  queue+=("$cost start_run $start")
done
for n in $(printf '%s\n' $BUDGETS "$START_UPDATES" | sort -nu); do queue+=("$n opd base $n"); done
lane1=() lane2=() load1=0 load2=0
while read -r cost job; do
  if (( load1 <= load2 )); then lane1+=("$job"); load1=$(( load1 + cost )); else lane2+=("$job"); load2=$(( load2 + cost )); fi
done < <(printf '%s\n' "${queue[@]}" | sort -k1,1nr)
( evaluate teacher checkpoints/toy/teacher; for job in "${lane1[@]}"; do $job; done ) &
( evaluate base checkpoints/toy/base; for job in "${lane2[@]}"; do $job; done ) &
wait_all
"$PY" scripts/toy_curves_report.py --curves "$CURVES" --start-updates "$START_UPDATES"
