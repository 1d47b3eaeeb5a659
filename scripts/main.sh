#!/usr/bin/env bash
# The main job on the embedded default: set up .venv/, then a short DPO run of SmolLM2-135M-Instruct
# on the shipped TL;DR comparisons, evaluated on held-out posts. ~3.5 min on 2 idle CPU cores from a fresh
# cache (bf16 where the CPU has bf16 units: --precision auto).
# Extra arguments are passed to `preftune train` (e.g. --lora, --max-pairs 64).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/preftune train --output-dir runs --lr 5e-5 --batch-size 4 --epochs 1 \
  --max-pairs 24 --max-eval-pairs 48 --overwrite "$@"
