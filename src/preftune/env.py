"""`preftune env`: what to paste into a bug report, as `transformers env` and `accelerate env` print.

Versions of preftune and the libraries it runs on, the torch build and its devices, threads, cache
folders, and whether the default model, data and reward model are there without a network. A token
is never printed: only whether one is set, and where from.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import preftune

LIBRARIES = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "huggingface_hub", "gradio")
TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")  # optional: --report-to
NOT_INSTALLED = "not installed"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def torch_build() -> dict[str, Any]:
    """torch's build (CPU, CUDA x.y or ROCm), whether a GPU is usable, the devices and the threads."""
    try:
        import torch
    except ImportError:
        return {"build": NOT_INSTALLED}
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip}"
    else:
        build = "CPU"
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    mps = getattr(torch.backends, "mps", None)
    from preftune.precision import AUTO_ENV, cpu_has_bf16, resolve

    return {"build": build, "cuda_available": cuda, "devices": devices,
            "mps_available": bool(mps and mps.is_available()),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cpu_bf16_units": cpu_has_bf16(), "precision_auto": resolve("auto"),
            "precision_auto_why": f"${AUTO_ENV}" if os.environ.get(AUTO_ENV) else "GPU" if cuda else
            "this CPU has bf16 units" if cpu_has_bf16() else "no bf16 units"}


def token_status() -> str:
    """Whether a Hugging Face token is set and where from; never its value."""
    if os.environ.get("HF_TOKEN"):
        return "set (HF_TOKEN)"
    try:
        from huggingface_hub import get_token
    except ImportError:
        return "not set"
    return "set (stored by `hf auth login`)" if get_token() else "not set"


def caches() -> dict[str, Any]:
    from preftune.models import cache_dir

    try:
        from huggingface_hub import constants
        hub_cache, offline = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    except ImportError:
        hub_cache, offline = NOT_INSTALLED, False
    return {"preftune": str(cache_dir()), "preftune_from": "PREFTUNE_CACHE" if os.environ.get("PREFTUNE_CACHE")
            else "default", "huggingface_hub": hub_cache, "hf_hub_offline": bool(offline),
            "hf_token": token_status()}


def _in_hub_cache(repo_id: str) -> str | None:
    """The cached config.json of a hub model, without asking the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return found if isinstance(found, str) else None


def _offline(repo_id: str, dist: str, wheel_copy) -> str:
    """Where a default model would come from offline: the hub cache, else the PyPI wheel `dist`
    holding a copy (`wheel_copy()` says where, or raises PreftuneError when it is not installed)."""
    from preftune.errors import PreftuneError

    cached = _in_hub_cache(repo_id)
    if cached:
        return f"yes: hub cache ({Path(cached).parent})"
    try:
        return f"yes: {dist} {version(dist)} wheel ({wheel_copy()})"
    except PreftuneError:
        return f"no: {repo_id} is not in the hub cache and {dist} is not installed (scripts/setup.sh installs it)"


def default_model() -> str:
    from preftune.config import DEFAULT_MODEL
    from preftune.models import EMBEDDED_DIST, converted_folder, embedded_gguf

    def converted() -> str:
        folder = converted_folder(embedded_gguf())
        return f"{'converted copy in' if (folder / 'config.json').is_file() else 'converted on first use into'} {folder}"

    return _offline(DEFAULT_MODEL, EMBEDDED_DIST, converted)


def default_data() -> str:
    from preftune.config import DEFAULT_DATASET
    from preftune.data.sources import shipped_path

    path = shipped_path(DEFAULT_DATASET)
    return f"yes: shipped sample '{DEFAULT_DATASET}' ({path})" if path.is_file() else f"no: {path} is missing"


def default_reward_model() -> str:
    from preftune.config import DEFAULT_RM
    from preftune.judge.reward import FALLBACK_DIST, fallback_folder

    return _offline(DEFAULT_RM, FALLBACK_DIST, lambda: str(fallback_folder()))


def collect() -> dict[str, Any]:
    return {
        "preftune": preftune.__version__,
        "preftune_location": str(Path(preftune.__file__).parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": {name: version(name) for name in LIBRARIES},
        "trackers": {name: version(name) for name in TRACKERS},
        "torch": torch_build(),
        "caches": caches(),
        "offline": {"default_model": default_model(), "default_data": default_data(),
                    "default_reward_model": default_reward_model()},
    }


def format_report(info: dict[str, Any]) -> str:
    t, c, o = info["torch"], info["caches"], info["offline"]
    rows = [("preftune", f"{info['preftune']} ({info['preftune_location']})"), ("Python", info["python"]),
            ("platform", info["platform"])]
    rows += list(info["libraries"].items())
    rows += [("trackers", ", ".join(f"{k} {v}" for k, v in info["trackers"].items()))]
    rows += [("torch build", t["build"])]
    if "threads" in t:
        rows += [("CUDA available", "yes" if t["cuda_available"] else "no"),
                 ("devices", ", ".join(t["devices"]) or "CPU only" + (" (MPS available)" if t["mps_available"] else "")),
                 ("torch threads", f"{t['threads']} (inter-op {t['interop_threads']})"),
                 ("CPU bf16 units", "yes (AVX512-BF16 or AMX)" if t["cpu_bf16_units"] else "no (bf16 is emulated)"),
                 ("--precision auto", f"{t['precision_auto']} ({t['precision_auto_why']})")]
    rows += [("preftune cache", f"{c['preftune']} ({'PREFTUNE_CACHE' if c['preftune_from'] != 'default' else 'default'})"),
             ("Hugging Face cache", c["huggingface_hub"]), ("HF_HUB_OFFLINE", "yes" if c["hf_hub_offline"] else "no"),
             ("Hugging Face token", c["hf_token"]),
             ("default model offline", o["default_model"]), ("default data offline", o["default_data"]),
             ("default reward model offline", o["default_reward_model"])]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"- {k + ':':<{width + 1}} {v}" for k, v in rows)


def report(as_json: bool = False) -> str:
    info = collect()
    return json.dumps(info, indent=2) if as_json else format_report(info)
