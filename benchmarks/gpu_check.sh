#!/usr/bin/env bash
# The GPU check in one command, on a CUDA machine that has this repository and no network.
#
#   bash benchmarks/gpu_check.sh [--budget 480] [--sections real,collect,...]   # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --dry-small                        # CI-sized, on the CPU
#   bash benchmarks/gpu_check.sh --fetch-wheels                                  # beforehand, with network
#
# What it runs with: the machine's own `python3` (override with PYTHON=...), which on this project's
# device image holds torch, transformers, safetensors, jaxtyping, numpy, scipy, scikit-learn,
# matplotlib, tqdm, tokenizers and einops (checked below, not assumed). real-lens itself is not
# installed: it is imported from this checkout (PYTHONPATH). What the image lacks (transformer-lens,
# datasets and the two packages datasets needs that the image does not hold) travels as wheels in
# .whl/ (git-ignored; the device call names it in `carry`), made beforehand on a machine with
# network by `--fetch-wheels`, and is installed offline into /tmp/site (pip --no-index, --target:
# the image's own packages stay as they are). The data (TruthfulQA, WikiText-2) is read from
# $REAL_LENS_DATA, else ./shared/data, else ../shared/data; `--fetch-wheels` also copies
# ../shared/data/{truthfulqa,wikitext2} into .gpu-data/ (git-ignored, ~6 MB) for the call to carry.
# Then benchmarks/gpu_check.py runs every section within the budget (480 s by default) and prints
# a summary. Device call, e.g.:
#   run(command="bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log", carry=[".whl", ".gpu-data"],
#       timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# Wheels for what the device image lacks and real-lens imports, at the versions this project is tested
# with (installed without their dependencies: transformer-lens 4.3 imports none of its other declared
# needs that the image lacks, e.g. wandb, typeguard, transformers-stream-generator, which has no wheel;
# gguf is only for the embedded model, whose package cannot travel).
WHEELS=("transformer-lens==4.3.0" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19")

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl .gpu-data
  exclude="$(git rev-parse --git-path info/exclude)"  # a worktree's .git is a file: ask git where it is
  mkdir -p "$(dirname "$exclude")"
  for ignored in /.whl/ /.gpu-data/; do grep -qx "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >> "$exclude"; done
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"
  for part in truthfulqa wikitext2; do
    cp -r "${REAL_LENS_DATA:-../shared/data}/$part" .gpu-data/
  done
  cp "${REAL_LENS_DATA:-../shared/data}/README.md" .gpu-data/ 2>/dev/null || true
  du -sh .whl .gpu-data
  exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  echo "gpu_check.sh: installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site (offline)"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${REAL_LENS_DATA:-}" ]]; then
  for candidate in .gpu-data shared/data ../shared/data; do
    if [[ -d "$candidate/truthfulqa" ]]; then export REAL_LENS_DATA="$PWD/$candidate"; break; fi
  done
fi

# Say at once what is missing, rather than after minutes of device time.
"$PYTHON" - <<'EOF'
import importlib.util, sys
needed = ["torch", "transformers", "transformer_lens", "jaxtyping", "einops", "safetensors", "tokenizers",
          "scipy", "sklearn", "matplotlib", "tqdm", "numpy"]
missing = [n for n in needed if importlib.util.find_spec(n) is None]
if missing:
    sys.exit(f"gpu_check.sh: missing Python packages {missing}; carry them as wheels (.whl, made by "
             "`bash benchmarks/gpu_check.sh --fetch-wheels` on a machine with network)")
EOF
exec "$PYTHON" -m benchmarks.gpu_check "$@"
