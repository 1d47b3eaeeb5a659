"""Is this process one rank of a real process group? Checked before any training work; and the few
collectives that keep the ranks of one run deciding the same thing.

torchrun and `accelerate launch` set RANK / WORLD_SIZE / MASTER_ADDR. An accelerate FSDP config on CPU
starts processes that each believe they are alone, or train with DDP unsharded (measured with accelerate
1.15, tests/test_fsdp.py): `check_launch()` stops every trainer with one line instead; a command that
orchestrates others in one process (`recipe`) calls `single_process()`. Ranks without a shared
filesystem see different files: where they read the disk to decide, `agreed` raises one rank's error on
every rank, `gather` lets them compare, `from_rank_zero` gives every rank rank 0's answer.
"""

from __future__ import annotations

import os

from preftune.errors import PreftuneError

RANK_KEYS = ("RANK", "WORLD_SIZE")
# what an accelerate config file with these plugins sets in the launched processes' environment
PLUGINS = (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"))


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


def requested_plugin(environ=os.environ) -> tuple[str, str] | None:
    """(environment key, name) of the FSDP/DeepSpeed plugin an accelerate config asks for, or None."""
    return next(((key, name) for key, name in PLUGINS if environ.get(key, "false").lower() in ("1", "true", "yes")),
                None)


def unapplied_plugin(environ=os.environ, cuda: bool = False) -> str | None:
    """An accelerate FSDP/DeepSpeed config that accelerate would silently not apply (on CPU it trains with
    DDP instead), or None."""
    plugin = None if cuda else requested_plugin(environ)
    if plugin is None:
        return None
    key, name = plugin
    return (f"this launch asks accelerate for {name} ({key}), which accelerate does not apply on CPU (it "
            f"would train unsharded, with DDP). For sharding on CPU use `torchrun --nproc_per_node N -m "
            "preftune train --fsdp ...`; drop the accelerate config file for plain data parallel")


def single_process(command: str, environ=os.environ) -> None:
    """Refuse any multi-process launch of a command that trains in one process: every process would run
    it whole and race on the same output folder (one deleting the .partial another writes), and an
    accelerate plugin would not be applied. Call first, before any work."""
    world = env_world(environ)[1]
    plugin = requested_plugin(environ)
    if world > 1 or plugin:
        asked = f"{world} processes" if world > 1 else f"accelerate's {plugin[1]} ({plugin[0]})"
        raise PreftuneError(f"`preftune {command}` trains in one process, but this launch asks for {asked}: run "
                            f"it as a plain `preftune {command} ...`, without torchrun or accelerate launch")


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


def end_group() -> None:
    """Destroy this process's process group, if it has one: each rank at its command's end, error or not.
    Left to interpreter exit, gloo's worker threads can still hold tensors while Python is torn down and
    the rank dies by SIGABRT ("terminate called without an active exception"): a run that succeeded
    fails. Local, not a collective: a rank that is done need not wait for rank 0's evaluation."""
    import sys

    dist = sys.modules.get("torch.distributed")  # not imported: this command never made a group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def group_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(value) -> list:
    """Every rank's `value`, in rank order; [value] without a process group of several. A collective:
    every rank must call it."""
    world = group_world()[1]
    if world == 1:
        return [value]
    import torch.distributed as dist

    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def _attempt(fn, args) -> tuple:
    """(fn(*args), None), or (None, the exception) — to be told to the other ranks before it is raised."""
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - re-raised by the caller once every rank knows
        return None, e


def _message(error: Exception | None) -> str | None:
    if error is None:
        return None
    return str(error) if isinstance(error, PreftuneError) else f"{type(error).__name__}: {error}"


def _raise_everywhere(mine: Exception | None, message: str) -> None:
    """This rank's own exception when it is the one told (a bug keeps its traceback where it happened), else
    the message as a PreftuneError."""
    if mine is not None and (not isinstance(mine, PreftuneError) or str(mine) == message):
        raise mine
    raise PreftuneError(message)


def agreed(check, *args):
    """check(*args) on every rank; an error on any rank is raised on every rank (the lowest rank's, named
    when the ranks disagree), so none goes on alone or waits forever in the next collective."""
    result, mine = _attempt(check, args)
    messages = gather(_message(mine))
    failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    if failed:
        rank, message = failed[0]
        if len(set(messages)) > 1:  # not every rank saw the same: say whose it is
            message = f"rank {rank} of {len(messages)}: {message}"
        _raise_everywhere(mine, message)
    return result


def from_rank_zero(fn, *args):
    """fn(*args) on rank 0 alone (the rank that writes: a lock, a plan, a run folder); its result — or its
    error — on every rank, so the others neither decide on their own disk nor wait for a rank that stopped."""
    rank, world = group_world()
    if world == 1:
        return fn(*args)
    import torch.distributed as dist

    result, mine = _attempt(fn, args) if rank == 0 else (None, None)
    box = [(result, _message(mine))]
    dist.broadcast_object_list(box, src=0)
    result, message = box[0]
    if message is not None:
        _raise_everywhere(mine, message)
    return result
