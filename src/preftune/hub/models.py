"""`preftune push RUN_DIR | ROOT --best N`: runs → Hugging Face Hub model repos, each with its card.

Each run is staged (hub/upload.py: the model, configs, log, metrics, held-out pairs, the training curves
and README.md, the card of hub/card.py), then uploaded, or with --dry-run listed and kept. `--best N`
ranks runs on validation as `preftune report` does, never picks a run without a valid value, and
refuses runs scored on different validation data. A run folder is only read, never written.
Details: docs/sweeps-and-hub.md.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from preftune.config import PushConfig
from preftune.errors import PreftuneError
from preftune.hub.card import CURVES, model_card
from preftune.hub.upload import (
    CARD,
    DEFAULT_STAGE,
    Upload,
    claim_stage,
    fresh_folder,
    hub_token,
    link_files,
    namespace_of,
    publish,
    repo_id_for,
)
from preftune.runs import folder as run_folder
from preftune.runs.results import Run, open_run
from preftune.sweep.leaderboard import data_groups, leaderboard
from preftune.sweep.plots import plot_curves

logger = logging.getLogger(__name__)

WRITTEN = {CURVES, CARD}  # written fresh into the upload folder, never linked: a link would write into the run


def check_run(run_dir: Path) -> Run:
    """A finished run folder with a model to upload."""
    run = open_run(run_dir)
    run.require_model()
    return run


def stage(run_dir: Path, repo_id: str, folder: Path, cfg: PushConfig) -> Upload:
    """Assemble the upload folder: the run's files (linked, not copied, where possible), the curves, the
    card. The card is built first, so a damaged run stops before anything is written."""
    run = check_run(run_dir)
    card = model_card(run.path, repo_id, cfg)
    log = run.train_log()
    fresh_folder(folder)
    link_files(run.path, folder, WRITTEN)
    if (run.path / "preferences.jsonl").is_file():
        logger.info(f"push: {run.name}/preferences.jsonl (the demo's votes) is not uploaded with the model; to publish "
                    f"them: preftune data push {run.path} --repo-id OWNER/NAME")
    plot_curves({run.name: log}, folder / CURVES)
    card.save(folder / CARD)
    return Upload(run.path, repo_id, folder)


def runs_to_push(path: Path, cfg: PushConfig) -> list[Path]:
    """RUN_DIR itself, or the --best N runs of a folder of runs, ranked on validation by --rank-by;
    a run without a valid value of that metric (not evaluated, NaN, an older eval.json) is never picked."""
    if cfg.best is None:
        if path.is_dir() and not path.name.endswith(run_folder.PARTIAL_SUFFIX) \
                and not (path / run_folder.CONFIG_FILE).is_file():
            raise PreftuneError(f"{path} is not a run folder; for a folder of runs pass --best N")
        return [check_run(path).path]
    rows = [r for r in leaderboard(path, cfg.rank_by) if r["rank"] is not None]
    groups = data_groups(rows)
    if len(groups) > 1:
        raise PreftuneError(f"{path} holds runs scored on different validation data ({len(groups)} groups: "
                            + "; ".join(f"{g[0]['eval_data']}: {len(g)} run(s)" for g in groups)
                            + "), so --best cannot rank them against each other: pass a folder of runs trained on "
                            "the same data, or push runs one at a time")
    if not rows:
        raise PreftuneError(f"{path} holds no runs with a valid validation {cfg.rank_by} to rank (not evaluated, "
                            "NaN, or evaluated by an older preftune: re-run `preftune eval RUN`, or pass --rank-by "
                            "accuracy)")
    if len(rows) < cfg.best:
        logger.warning(f"warning: only {len(rows)} run(s) under {path} have a valid validation {cfg.rank_by}; "
                       f"pushing {len(rows)}, not {cfg.best}")
    return [path / r["run"] for r in rows[: cfg.best]]


def push(path: Path, cfg: PushConfig) -> list[Upload]:
    """Stage and upload (or, with --dry-run, only stage) each run; checks everything first. (`preftune
    push` sends a reward model folder to preftune.hub.rm instead: see preftune.hub.cli.)"""
    runs = [check_run(r).path for r in runs_to_push(path, cfg)]
    if cfg.dry_run:
        stage_root = claim_stage(cfg.stage_dir, runs[0].parent / DEFAULT_STAGE, runs, [r.name for r in runs])
    elif cfg.stage_dir is not None:
        logger.warning("warning: --stage-dir is used only with --dry-run; uploading from a temporary folder")
    token = hub_token()
    namespace = namespace_of(cfg, token, required=not cfg.dry_run)
    unknown = "" if namespace else ("; the namespace is the token owner's, unknown without a token or a reachable Hub "
                                    "(or pass --namespace)")
    uploads = []
    with tempfile.TemporaryDirectory(prefix="preftune-push-") as tmp:
        for run_dir in runs:
            repo_id = repo_id_for(run_dir, cfg, namespace)
            folder = (stage_root if cfg.dry_run else Path(tmp)) / run_dir.name
            plan = stage(run_dir, repo_id, folder, cfg)
            publish(plan, cfg, token, note=unknown)
            uploads.append(plan)
    return uploads
