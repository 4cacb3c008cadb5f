# Sourced by scripts/reproduce_toy.sh, scripts/toy_curves.sh and scripts/demo.sh (needs RUNS, and PY and
# DATA for toy_corpus).
# stage NAME OUTPUT CMD...: run CMD unless OUTPUT exists; its wall time (added to any earlier part
# of the same stage) goes to $RUNS/wall_times/NAME, one file a stage so stages may run side by side.
# wait_all: wait for every background job of the calling shell; fails if one did.
wait_all() { local ok=0; for job in $(jobs -p); do wait "$job" || ok=1; done; return $ok; }
# require_shipped MODEL...: exit, naming what makes it, unless checkpoints/toy/MODEL holds a model.
require_shipped() {
  local model
  for model in "$@"; do
    if [ ! -f "checkpoints/toy/$model/model.safetensors" ]; then
      echo "checkpoints/toy/$model is missing: bash scripts/reproduce_toy.sh makes it" >&2
      exit 1
    fi
  done
}
# With ASKED set (stage names, space-separated), only those stages run; the others say so and pass.
asked() { [ -z "${ASKED:-}" ] || [[ " $ASKED " == *" $1 "* ]]; }
stage() {
  local name=$1 output=$2 start before=0
  shift 2
  if ! asked "$name"; then echo "== $name: not asked for"; return; fi
  if [ -e "$output" ]; then echo "== $name: done ($output)"; return; fi
  echo "== $name: $*"
  mkdir -p "$RUNS/wall_times"
  [ -f "$RUNS/wall_times/$name" ] && before=$(cat "$RUNS/wall_times/$name")
  start=$(date +%s)
  "$@"
  echo $(( before + $(date +%s) - start )) > "$RUNS/wall_times/$name"
}

# toy_tokenizer: the toy models' character vocabulary (their model configs' runs/toy/tokenizer), one stage.
toy_tokenizer() {
  stage tokenizer "$RUNS/tokenizer/tokenizer.json" \
    "$PY" -m train.models.char_tokenizer --manifest "$DATA/train.jsonl" --out "$RUNS/tokenizer"
}

# toy_corpus [--pool-only]: the 19-language toy corpus in $DATA (cached by its recipe), with the split of
# its training audio into a labelled share and an unlabelled pool, as one timed stage. --pool-only leaves
# out the labelled share's audio (about 40 % of the clips): OPD from the shipped base student reads none.
toy_corpus() {
  local args=(--out "$DATA" --seed 0 "$@") output=$DATA/train_labelled.jsonl
  [ "${1:-}" = --pool-only ] && output=$DATA/train_pool.jsonl
  # A corpus made by an earlier version of the recipe (or other arguments) is built again.
  if [ -e "$output" ] && ! "$PY" data_recipes/toy_tts/prepare.py "${args[@]}" --check >/dev/null; then
    rm -f "$output"
  fi
  stage corpus "$output" "$PY" data_recipes/toy_tts/prepare.py "${args[@]}"
}
