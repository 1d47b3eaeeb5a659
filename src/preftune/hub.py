"""`preftune push`: a run folder → a Hugging Face Hub model repo with a model card.

    preftune push RUN_DIR [--repo-id OWNER/NAME] [--private] [--dry-run]
    preftune push ROOT --best N [--namespace ORG]

Each run is first staged into an upload folder (hard links to the run's files where the filesystem
allows): the model as `save_pretrained` wrote it, the run's configs, log, metrics and held-out pairs,
`training_curves.png`, and README.md — the model card, with Hub metadata (base_model, datasets, tags,
license, model-index holding the eval metrics), hyperparameters, data, metrics, the curves and a usage
snippet. Then `create_repo(exist_ok=True)` + `upload_folder`; unchanged files are not re-sent and an
unchanged run makes no new commit, so pushing twice is harmless. `--dry-run` stops after staging.

The token comes from HF_TOKEN or the `hf auth login` cache (`huggingface_hub.get_token`). It is handed
to the client and nowhere else: never printed, logged, or written into a file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from preftune.config import DEFAULT_MODEL, PushConfig, add_arguments, from_args
from preftune.errors import PreftuneError
from preftune.report import CONFIG_FILE, leaderboard, plot_curves, read_log

NOT_UPLOADED = {"training_args.bin"}  # a pickle of the Trainer's arguments: unsafe to load, no use to a reader
NOT_UPLOADED_DIRS = {"checkpoints"}
CURVES = "training_curves.png"
# Datasets preftune knows by another name: the shipped sample is a part of this Hub dataset.
HUB_DATASETS = {"tldr-sample": "openai/summarize_from_feedback"}
KNOWN_LICENSES = {DEFAULT_MODEL: "apache-2.0"}
TOKEN_HELP = ("create a token with write access at https://huggingface.co/settings/tokens, then set HF_TOKEN "
              "or run `hf auth login`")


@dataclass
class Upload:
    run_dir: Path
    repo_id: str
    folder: Path  # staged: exactly what upload_folder sends

    def files(self) -> list[tuple[str, int]]:
        return sorted((str(p.relative_to(self.folder)), p.stat().st_size) for p in self.folder.rglob("*") if p.is_file())


# ---- the model card ------------------------------------------------------------------------------


def _is_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not Path(spec).exists()


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _plain(value) -> str:
    """A setting as the user gave it (5e-06, 0.1), not rounded."""
    return "n/a" if value is None else str(value)


def base_model_of(run: dict, override: str | None) -> str | None:
    """The base model's Hub id, when there is one (a local folder has none unless given)."""
    spec = override or run.get("reference_model") or run["train"]["model"]
    return spec if _is_hub_id(spec) else None


def license_of(base_model: str | None, run: dict, override: str | None) -> str:
    """--license, else the base model's (known ids, or a local base folder's own card), else 'other'."""
    if override:
        return override
    if base_model in KNOWN_LICENSES:
        return KNOWN_LICENSES[base_model]
    readme = Path(run.get("reference_model") or "") / "README.md"
    if readme.is_file():
        from huggingface_hub import ModelCard

        license_ = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict().get("license")
        if isinstance(license_, str):
            return license_
    return "other"


def eval_results(evaluation: dict, dataset_id: str | None, dataset: str):
    """model-index entries: the held-out metrics, as the Hub's EvalResult."""
    from huggingface_hub import EvalResult

    metrics = [("accuracy", "accuracy", "preference accuracy (DPO implicit reward)"),
               ("mean_margin", "mean_reward_margin", "mean reward margin, chosen − rejected"),
               ("mean_logp_drift", "mean_logp_drift", "mean log-prob drift from the base model"),
               ("chosen_shorter_accuracy", "accuracy_chosen_shorter", "accuracy where the chosen summary is shorter")]
    return [EvalResult(task_type="text-generation", task_name="Preference ranking of summaries",
                       dataset_type=dataset_id or "local", dataset_name=f"{dataset} (held-out posts)",
                       dataset_split="held-out", metric_type=metric, metric_name=name, metric_value=evaluation[key])
            for key, metric, name in metrics if evaluation.get(key) is not None]


def model_card(run_dir: Path, repo_id: str, cfg: PushConfig):
    """The README.md of the repo, as a huggingface_hub ModelCard (YAML metadata + Markdown)."""
    from huggingface_hub import ModelCard, ModelCardData

    run = json.loads((run_dir / CONFIG_FILE).read_text())
    metrics = _read(run_dir / "metrics.json")
    evaluation = _read(run_dir / "eval.json")
    data, train = run["data"], run["train"]
    base = base_model_of(run, cfg.base_model)
    dataset = data["dataset"]
    dataset_id = HUB_DATASETS.get(dataset) or (dataset if _is_hub_id(dataset) else None)
    name = repo_id.split("/")[-1]
    tags = ["dpo", "preftune", "text-generation"] + (["trl"] if train.get("engine") == "trl" else []) \
        + (["lora"] if train.get("lora") else [])
    card_data = ModelCardData(
        base_model=base, datasets=[dataset_id] if dataset_id else None, license=license_of(base, run, cfg.license),
        library_name="transformers", pipeline_tag="text-generation", tags=tags, model_name=name,
        eval_results=eval_results(evaluation, dataset_id, dataset) or None,
    )
    fit = run.get("fit", {})
    eval_rows = [(label, _fmt(evaluation.get(key))) for key, label in [
        ("accuracy", "preference accuracy (implicit reward)"), ("mean_margin", "mean reward margin"),
        ("mean_chosen_reward", "mean reward, chosen"), ("mean_rejected_reward", "mean reward, rejected"),
        ("mean_logp_drift", "mean log-prob drift from the base model"),
        ("reference_logp_accuracy", "base model's own likelihood accuracy"),
        ("longer_wins_baseline", "'longer summary wins' baseline"),
        ("chosen_shorter_accuracy", "accuracy where the chosen summary is shorter")]] if evaluation else [
        ("evaluation", "not run (trained with --no-evaluate)")]
    from preftune.judge import judge_summary

    judge = _read(run_dir / "judge.json")
    judged = judge_summary(judge)
    if judged.get("judge_win_rate") is not None:
        ci = judged["judge_win_rate_ci95"] or [None, None]
        eval_rows += [
            ("judged win rate over the base model (greedy, reward-model judge)",
             f"{_fmt(judged['judge_win_rate'])} (95% CI {_fmt(ci[0])}–{_fmt(ci[1])}, n={judged['judge_n']})"),
            ("length-controlled judged win rate", _fmt(judged["judge_length_controlled_win_rate"])),
            ("judge's verdict strength", f"{judged['judge_verdict_strength']} (reward model held-out accuracy "
                                         f"{_fmt(judged['judge_rm_accuracy'])})"),
        ]
    hyperparameters = [(k.replace("_", " "), _plain(train.get(k))) for k in
                       ("lr", "batch_size", "epochs", "beta", "loss", "max_length", "engine", "lora", "grad_accum")]
    hyperparameters += [("optimizer steps", _fmt(metrics.get("steps"))),
                        ("train time (s)", _fmt(metrics.get("train_runtime_s"), 1)),
                        ("tokens/s", _fmt(metrics.get("tokens_per_s"), 1)), ("seed", _fmt(data.get("seed")))]
    if train.get("lora"):
        hyperparameters += [("LoRA r / alpha / targets", f"{train['lora_r']} / {train['lora_alpha']} / {train['lora_targets']}")]
    data_rows = [("dataset", f"`{dataset}`" + (f" ([{dataset_id}](https://huggingface.co/datasets/{dataset_id}))"
                                             if dataset_id else "")),
                 ("fraction of the cleaned pairs used", _plain(data.get("fraction"))),
                 ("held-out fraction of posts", _plain(data.get("eval_fraction"))),
                 ("split", "by post: no post in both training and held-out pairs"),
                 ("training pairs", _fmt(metrics.get("train_pairs"))),
                 ("held-out pairs scored", _fmt(evaluation.get("n"))),
                 ("pairs with their post trimmed to fit max_length",
                  f"{_fmt(fit.get('train', {}).get('trimmed'))} train, {_fmt(fit.get('eval', {}).get('trimmed'))} held out")]
    from importlib.resources import files

    return ModelCard.from_template(
        card_data, template_str=files("preftune").joinpath("templates/model_card.md.j2").read_text(),
        name=name, repo_id=repo_id, preftune_version=run.get("preftune_version", "?"),
        base_model_text=f"[{base}](https://huggingface.co/{base})" if base else
        f"A local model (`{Path(train['model']).name}`)",
        dataset_text=f"`{dataset}`" + (f" (from [{dataset_id}](https://huggingface.co/datasets/{dataset_id}))"
                                       if dataset_id else ""),
        eval=evaluation or {"n": 0, "posts": 0}, eval_rows=eval_rows, hyperparameters=hyperparameters,
        data_rows=data_rows, example_prompt=json.dumps(_example_prompt(run_dir), ensure_ascii=False),
        lora=bool(train.get("lora")), tldr=dataset_id == "openai/summarize_from_feedback",
        judge_verdict=judge.get("verdict") or [],
    )


def _example_prompt(run_dir: Path) -> str:
    path = run_dir / "eval_pairs.jsonl"
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []
    return min(prompts, key=len) if prompts else "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:"


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


# ---- staging -------------------------------------------------------------------------------------


def check_run(run_dir: Path) -> None:
    if run_dir.name.endswith(".partial"):
        raise PreftuneError(f"{run_dir} is an unfinished run (interrupted or still training): re-run its "
                            "train/sweep command to complete it, then push the folder without .partial")
    for name in (CONFIG_FILE, "config.json"):
        if not (run_dir / name).is_file():
            raise PreftuneError(f"{run_dir} is not a finished preftune run folder (no {name})")
    if not any(run_dir.glob("*.safetensors")):
        raise PreftuneError(f"{run_dir} holds no model weights (*.safetensors)")


def stage(run_dir: Path, repo_id: str, folder: Path, cfg: PushConfig) -> Upload:
    """Assemble the upload folder: the run's files (linked, not copied, where possible), the curves, the card."""
    check_run(run_dir)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for src in sorted(run_dir.rglob("*")):
        rel = src.relative_to(run_dir)
        if not src.is_file() or rel.name in NOT_UPLOADED or rel.parts[0] in NOT_UPLOADED_DIRS or src.suffix == ".tmp":
            continue
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)  # the weights can be large: link when the filesystem allows
        except OSError:
            shutil.copy2(src, dest)
    plot_curves({run_dir.name: read_log(run_dir)}, folder / CURVES)
    model_card(run_dir, repo_id, cfg).save(folder / "README.md")
    return Upload(run_dir, repo_id, folder)


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
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

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


def upload(plan: Upload, cfg: PushConfig, token: str) -> str:
    """create_repo(exist_ok=True) + upload_folder. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors(plan.repo_id):
        url = api.create_repo(plan.repo_id, private=cfg.private, exist_ok=True)
        info = api.upload_folder(repo_id=url.repo_id, folder_path=plan.folder,
                                 commit_message=f"preftune: {plan.run_dir.name}")
    return info.commit_url


def runs_to_push(path: Path, cfg: PushConfig) -> list[Path]:
    """RUN_DIR itself, or the --best N runs of a sweep folder by held-out accuracy."""
    if cfg.best is None:
        if not (path / CONFIG_FILE).is_file() and path.is_dir() and not path.name.endswith(".partial"):
            raise PreftuneError(f"{path} is not a run folder; for a folder of runs pass --best N")
        return [path]
    rows = [r for r in leaderboard(path) if r["accuracy"] is not None]
    if not rows:
        raise PreftuneError(f"{path} holds no evaluated runs to rank")
    return [path / r["run"] for r in rows[: cfg.best]]


def push(path: Path, cfg: PushConfig, log=print) -> list[Upload]:
    runs = runs_to_push(path, cfg)
    for run_dir in runs:
        check_run(run_dir)
    token = hub_token()
    namespace = namespace_of(cfg, token, required=not cfg.dry_run)
    root = runs[0].parent
    stage_root = Path(cfg.stage_dir) if cfg.stage_dir else root / "hub_upload"
    uploads = []
    with tempfile.TemporaryDirectory(prefix="preftune-push-") as tmp:
        for run_dir in runs:
            repo_id = repo_id_for(run_dir, cfg, namespace)
            folder = (stage_root if cfg.dry_run else Path(tmp)) / run_dir.name
            plan = stage(run_dir, repo_id, folder, cfg)
            files = plan.files()
            log(f"push: {run_dir} → {repo_id}{' (private)' if cfg.private else ''}: {len(files)} files, "
                f"{sum(s for _, s in files) / 1e6:.1f} MB")
            if cfg.dry_run:
                for rel, size in files:
                    log(f"  {rel:<40} {size:>14,} bytes")
                log(f"dry run: nothing uploaded; the folder is {folder} (its README.md is the model card)"
                    + ("" if namespace else "; the namespace is the token owner's, unknown without a token "
                       "or a reachable Hub (or pass --namespace)"))
            else:
                url = upload(plan, cfg, token)
                log(f"push: {repo_id} ← {url}")
            uploads.append(plan)
    return uploads


def add_cli(verbs) -> None:
    parser = verbs.add_parser("push", help="push a run (or a sweep's best runs) to the Hugging Face Hub with a "
                              "model card")
    parser.add_argument("path", metavar="RUN_DIR|ROOT", help="a run folder; or, with --best N, a folder of runs")
    add_arguments(parser, PushConfig)
    parser.set_defaults(func=lambda ns: push(Path(ns.path), from_args(PushConfig, ns)))
