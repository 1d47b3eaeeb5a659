"""Is this process one rank of a real process group? Checked before any training work.

A launcher says how many processes it started through the environment (torchrun and `accelerate
launch` set RANK / WORLD_SIZE / MASTER_ADDR). Measured with accelerate 1.15 on CPU: an FSDP config file
starts processes that, seen through `Accelerator()`, each believe they are the only one (they would
train, evaluate and write the run folder alone, silently), and seen through `Accelerator(cpu=True)`
train with DDP, unsharded — the config is silently not applied either way (tests/test_fsdp.py runs it). Every training command calls
`check_launch()` first and stops with one line instead.
"""

from __future__ import annotations

import os

from preftune.errors import PreftuneError

RANK_KEYS = ("RANK", "WORLD_SIZE")


def env_world(environ=os.environ) -> tuple[int, int]:
    """(rank, world size) the launcher set in the environment; (0, 1) for a plain `python -m preftune`."""
    try:
        rank, world = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise PreftuneError(f"RANK={environ.get('RANK')!r} / WORLD_SIZE={environ.get('WORLD_SIZE')!r} in the "
                            "environment are not integers; launch with torchrun or accelerate launch") from None
    if world < 1 or not 0 <= rank < world:
        raise PreftuneError(f"RANK={rank} and WORLD_SIZE={world} in the environment are inconsistent (need "
                            "0 <= RANK < WORLD_SIZE); launch with torchrun or accelerate launch, or unset them")
    if world > 1 and not environ.get("MASTER_ADDR"):
        raise PreftuneError(f"WORLD_SIZE={world} is set but MASTER_ADDR is not, so no launcher started the other "
                            "processes: launch with torchrun/accelerate launch, or unset WORLD_SIZE and RANK")
    return rank, world


def group_mismatch(env: tuple[int, int], accelerate: tuple[int, int], torch_group: tuple[int, int]) -> str | None:
    """Why these (rank, world size) views do not describe one process group, or None when they agree."""
    if env == accelerate == torch_group:
        return None
    return (f"the launcher started this process as rank {env[0]} of {env[1]} (RANK/WORLD_SIZE), but accelerate "
            f"sees rank {accelerate[0]} of {accelerate[1]} and torch.distributed rank {torch_group[0]} of "
            f"{torch_group[1]}: the processes do not form one group, so each would train and write the run alone. "
            "Launch with `torchrun --nproc_per_node N -m preftune ...` (or `accelerate launch --num_processes N`)")


def unapplied_plugin(environ=os.environ, cuda: bool = False) -> str | None:
    """An accelerate FSDP/DeepSpeed config that accelerate would silently not apply (on CPU it trains with
    DDP instead), or None."""
    if cuda:
        return None
    for key, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if environ.get(key, "false").lower() in ("1", "true", "yes"):
            return (f"this launch asks accelerate for {name} ({key}), which accelerate does not apply on CPU (it "
                    f"would train unsharded, with DDP). For sharding on CPU use `torchrun --nproc_per_node N -m "
                    "preftune train --fsdp ...`; drop the accelerate config file for plain data parallel")
    return None


def check_launch() -> tuple[int, int]:
    """(rank, world size) of this training process, after checking that the launcher's processes form
    one process group (initialising it through accelerate, as both engines then use it)."""
    import torch

    rank, world = env_world()
    cuda = torch.cuda.is_available()
    problem = unapplied_plugin(cuda=cuda)
    if problem:
        raise PreftuneError(problem)
    if world == 1:
        return 0, 1
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=not cuda)
    group = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    problem = group_mismatch((rank, world), (state.process_index, state.num_processes), group)
    if problem:
        raise PreftuneError(problem)
    return rank, world


def group_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
