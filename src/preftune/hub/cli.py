"""`preftune push PATH`: a run folder, a sweep's best runs (--best N) or a reward model folder, each to
its own pusher (hub/models.py for runs, hub/rm.py for reward models; both share hub/upload.py's staging,
safety checks and Hub errors). The verb lives here so that neither pusher imports the other."""

from __future__ import annotations

from pathlib import Path

from preftune.config import PushConfig, add_arguments, from_args


def push(path: Path, cfg: PushConfig) -> list:
    from preftune.hub.models import push as push_runs
    from preftune.hub.rm import is_reward_model_dir, push_reward_model

    if cfg.best is None and is_reward_model_dir(path):
        return [push_reward_model(path, cfg)]
    return push_runs(path, cfg)


def add_cli(verbs) -> None:
    parser = verbs.add_parser("push", help="push a run (or a sweep's best runs, or a reward model) to the Hugging "
                              "Face Hub with a model card")
    parser.add_argument("path", metavar="RUN_DIR|ROOT|RM_DIR", help="a run folder; with --best N, a folder of runs; "
                        "or a reward model folder from `preftune rm train`")
    add_arguments(parser, PushConfig)
    parser.set_defaults(func=lambda ns: push(Path(ns.path), from_args(PushConfig, ns)))
