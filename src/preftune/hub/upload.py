"""The upload folder and the Hub, shared by every push (models, reward models, datasets, the Space).

A push stages what it sends into a folder first (hard links where the filesystem allows), which a dry
run keeps and lists; a stage folder never is, is inside or contains what is pushed, and is replaced only
when preftune staged it. Then `create_repo(exist_ok=True)` + `upload_folder`. Hub failures become
one-line errors that say what to do. The token (HF_TOKEN or `hf auth login`) goes to the client only:
never printed, logged or written.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from preftune.config import PushConfig
from preftune.errors import PreftuneError
from preftune.runs import folder as run_folder

logger = logging.getLogger(__name__)

# training_args.bin: a pickle of the Trainer's arguments, unsafe to load and of no use to a reader;
# preferences.jsonl: the demo's votes, people's input: published only on purpose, with `preftune data push`;
# tracking.json: local paths of the run's experiment tracker
NOT_UPLOADED = {"training_args.bin", "preferences.jsonl", "tracking.json"}
NOT_UPLOADED_DIRS = {run_folder.CHECKPOINTS_DIR}
CARD = "README.md"  # a repo's card, written into the upload folder by each push
STAGE_MARK = ".preftune-stage"  # in a --stage-dir: preftune staged the folders here, so it may replace them
DEFAULT_STAGE = "hub_upload"
TOKEN_HELP = ("create a token with write access at https://huggingface.co/settings/tokens, then set HF_TOKEN "
              "or run `hf auth login`")


@dataclass
class Upload:
    run_dir: Path
    repo_id: str
    folder: Path  # staged: exactly what upload_folder sends

    def files(self) -> list[tuple[str, int]]:
        return sorted((str(p.relative_to(self.folder)), p.stat().st_size) for p in self.folder.rglob("*") if p.is_file())


# ---- staging --------------------------------------------------------------------------------------


def _relation(stage: Path, folder: Path) -> str | None:
    """How a stage folder sits against a folder that must not be touched (all paths resolved)."""
    if stage == folder:
        return "is"
    if folder in stage.parents:
        return "is inside"
    if stage in folder.parents:
        return "is a parent of"
    return None


def check_stage_dir(stage_dir: str, protected: list[Path], what: str = "the run folder",
                    default: str = "ROOT/hub_upload") -> Path:
    """The folder a dry run stages into, checked before any work: it must not be, be inside or contain
    a protected path (what is being pushed: staging replaces STAGE/NAME, which would then be the run;
    ROOT contains every run), and must be a writable folder (created if missing). Returns it, resolved."""
    if not str(stage_dir).strip():
        raise PreftuneError(f"--stage-dir is empty: pass a folder for the upload folders (default: {default})")
    stage = Path(stage_dir).expanduser().resolve()
    for path in protected:
        relation = _relation(stage, path.resolve())
        if relation:
            raise PreftuneError(f"--stage-dir {stage_dir} {relation} {what} {path}: staging there would replace "
                                f"or write into it. Pass a separate folder (default: {default})")
    if stage.exists() and not stage.is_dir():
        raise PreftuneError(f"--stage-dir {stage_dir} is {'a file' if stage.is_file() else 'not a folder'}: pass a "
                            "folder (it is created if missing)")
    try:
        stage.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=stage, prefix=".preftune-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PreftuneError(f"--stage-dir {stage_dir} cannot be written ({e.strerror or e}): pass a writable "
                            "folder") from None
    return stage


def claim_stage(stage_dir: str | None, default_root: Path, protected: list[Path], names: list[str],
                what: str = "the run folder") -> Path:
    """The checked folder a dry run stages into (--stage-dir, or default_root, e.g. ROOT/hub_upload),
    marked as preftune's. An existing STAGE/NAME is replaced only when preftune staged it: the folder
    carries the mark (or is the default), else the dry run is refused before any work."""
    default = stage_dir is None
    stage = check_stage_dir(str(default_root) if default else stage_dir, protected, what, str(default_root))
    owned = default or (stage / STAGE_MARK).is_file()
    for name in names:
        target = stage / name
        if target.is_symlink() or target.exists() and not (owned and target.is_dir()):
            raise PreftuneError(f"{target} exists and was not staged by `preftune push --dry-run`: move it away or "
                                "pass another --stage-dir")
    if not default:  # the default folder is preftune's by its name
        (stage / STAGE_MARK).touch()
    return stage


def fresh_folder(folder: Path) -> None:
    """An empty upload folder (an earlier staging there is replaced: claim_stage checked it is preftune's)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def link_files(source: Path, folder: Path, written: set[str]) -> None:
    """Every file of source into folder, hard-linked where the filesystem allows (weights can be large),
    except what is never uploaded and the files `written` fresh (a link would write into the source)."""
    for src in sorted(source.rglob("*")):
        rel = src.relative_to(source)
        if (not src.is_file() or rel.name in NOT_UPLOADED or rel.parts[0] in NOT_UPLOADED_DIRS
                or src.suffix == ".tmp" or str(rel) in written):
            continue
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)


# ---- the Hub -------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP library under huggingface_hub (httpx2 in 2.x, httpx in 1.x)."""
    from huggingface_hub.utils import get_session

    library = importlib.import_module(type(get_session()).__module__.split(".")[0])
    return (getattr(library, "TransportError", ConnectionError), ConnectionError, TimeoutError)


@contextlib.contextmanager
def hub_errors(repo_id: str | None):
    """Turn the Hub client's failures into one-line errors that say what to do next."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
    )

    endpoint, repo = constants.ENDPOINT, repo_id or "the repo"
    try:
        yield
    except HFValidationError as e:
        raise PreftuneError(f"invalid repo name {repo_id!r}: {str(e).splitlines()[0]} Pass --repo-id OWNER/NAME "
                            "with letters, digits, '-', '_' and '.' (at most 96 characters)") from None
    except OfflineModeIsEnabled:
        raise PreftuneError("HF_HUB_OFFLINE is set, so nothing can be pushed: unset it, or use --dry-run") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        said = (e.server_message or str(e).splitlines()[0]).strip()
        if status == 401:
            raise PreftuneError(f"the Hub at {endpoint} rejected the token (401 Unauthorized: invalid, expired or "
                                f"revoked): {TOKEN_HELP}") from None
        if status == 403:
            raise PreftuneError(f"not allowed to write to {repo} (403 Forbidden: {said}). The repo or its namespace "
                                "belongs to someone else, or the token cannot write there: push to your own namespace "
                                "(leave out --repo-id/--namespace) or an organization you write to, with a write token") from None
        if status in (400, 422):
            raise PreftuneError(f"the Hub refused {repo} ({status}: {said}); if the name is the problem, pass "
                                "--repo-id OWNER/NAME with letters, digits, '-', '_' and '.'") from None
        raise PreftuneError(f"the Hub at {endpoint} answered {status} for {repo}: {said}") from None
    except _network_errors() as e:
        raise PreftuneError(f"cannot reach the Hub at {endpoint} ({type(e).__name__}: {e}): check the network "
                            "connection, any proxy (HTTPS_PROXY) and HF_ENDPOINT; --dry-run works offline") from None


def hub_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def namespace_of(cfg: PushConfig, token: str | None, required: bool) -> str | None:
    """--namespace, else the token owner's name (whoami). None (for a dry run) when it cannot be known."""
    if cfg.namespace:
        return cfg.namespace
    if token is None:
        if required:
            raise PreftuneError(f"no Hugging Face token found: {TOKEN_HELP}")
        return None
    from huggingface_hub import HfApi

    try:
        with hub_errors(None):
            return HfApi(token=token).whoami()["name"]
    except PreftuneError:
        if required:
            raise
        return None


def repo_id_for(run_dir: Path, cfg: PushConfig, namespace: str | None) -> str:
    from huggingface_hub.utils import validate_repo_id

    repo_id = cfg.repo_id or f"{namespace or '<your-username>'}/{run_dir.name}"
    if cfg.repo_id or namespace:
        with hub_errors(repo_id):
            validate_repo_id(repo_id)
            if repo_id.count("/") != 1:
                from huggingface_hub.errors import HFValidationError

                raise HFValidationError(f"Repo id must be OWNER/NAME, got {repo_id!r}.")
    return repo_id


def upload(plan: Upload, private: bool, token: str, repo_type: str = "model") -> str:
    """create_repo(exist_ok=True) + upload_folder. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors(plan.repo_id):
        url = api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type=repo_type)
        info = api.upload_folder(repo_id=url.repo_id, folder_path=plan.folder, repo_type=repo_type,
                                 commit_message=f"preftune: {plan.run_dir.name}")
    return info.commit_url


def publish(plan: Upload, cfg, token: str | None, repo_type: str = "model", note: str = "") -> None:
    """Say what a staged folder holds; upload it, or with --dry-run list it and stop. `cfg`: any config
    with private and dry_run."""
    files = plan.files()
    kind = " (dataset repo)" if repo_type == "dataset" else ""
    logger.info(f"push: {plan.run_dir} → {plan.repo_id}{kind}{' (private)' if cfg.private else ''}: {len(files)} files, "
                f"{sum(s for _, s in files) / 1e6:.1f} MB")
    if cfg.dry_run:
        for rel, size in files:
            logger.info(f"  {rel:<40} {size:>14,} bytes")
        card = "dataset card" if repo_type == "dataset" else "model card"
        logger.info(f"dry run: nothing uploaded; the folder is {plan.folder} (its README.md is the {card}){note}")
    else:
        url = upload(plan, cfg.private, token, repo_type)
        logger.info(f"push: {plan.repo_id} ← {url}")
