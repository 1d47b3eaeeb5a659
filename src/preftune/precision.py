"""--precision: what the engines compute in, checked against what this machine can run.

Weights and optimizer state stay fp32 in every mode; bf16/fp16 are mixed precision (autocast), as
accelerate (fast engine) and the HF Trainer (TRL engine, `bf16=`/`fp16=`) implement them. Masks
built by preftune are in the compute dtype (`DTYPES`), so no kernel meets a float32 mask next to
bf16 queries.
"""

from __future__ import annotations

import logging
import os

import torch

from preftune.config.registries import PRECISIONS
from preftune.errors import PreftuneError

logger = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, dtype) for name, dtype in PRECISIONS.items()}  # --precision → the compute dtype
ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # accelerate's `mixed_precision`
AUTO_ENV = "PREFTUNE_AUTO_PRECISION"  # overrides what --precision auto picks (the tests pin it to fp32)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units (AVX512-BF16 or AMX); without them bf16 is emulated, ~10× slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast(precision: str, device) -> torch.autocast:
    """The mixed-precision context inference runs in (eval, judge, demo): `precision` as `resolve` returns it,
    on `device`'s type; fp32 is a disabled autocast. Weights stay fp32; callers take log-softmax in fp32."""
    dtype = DTYPES[precision]
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


def auto(cuda: bool) -> str:
    """What --precision auto picks on this hardware: bf16 on a CUDA GPU that has it and on a CPU with bf16
    units (measured against fp32 in bench/README.md before it became the default), else fp32."""
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve(precision: str, cuda: bool | None = None) -> str:
    """'auto' → $PREFTUNE_AUTO_PRECISION when set (one machine's runs made comparable with another's;
    checked as an explicit choice), else `auto`'s pick. A precision this machine cannot run is a
    PreftuneError; bf16 on a CPU without bf16 units runs, with a warning."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    bf16_gpu = cuda and torch.cuda.is_bf16_supported()
    if precision == "auto":
        precision = os.environ.get(AUTO_ENV) or auto(cuda)
        if precision not in DTYPES:
            raise PreftuneError(f"${AUTO_ENV}={precision!r}: choose one of {', '.join(DTYPES)} (or unset it)")
    if precision not in DTYPES:
        raise PreftuneError(f"unknown --precision '{precision}'; choose one of: auto, {', '.join(DTYPES)}")
    if precision == "fp16" and not cuda:
        raise PreftuneError("--precision fp16 needs a CUDA GPU: on CPU accelerate and the Trainer do not run fp16 "
                            "mixed precision (they would silently train in fp32); use --precision bf16 or fp32")
    if precision == "bf16" and cuda and not bf16_gpu:
        raise PreftuneError("--precision bf16: this GPU has no bf16 support; use --precision fp16 or fp32")
    if precision == "bf16" and not cuda and not cpu_has_bf16():
        logger.warning("warning: --precision bf16 on a CPU without bf16 units (AVX512-BF16/AMX) runs ~10x slower "
                       "than fp32")
    return precision
