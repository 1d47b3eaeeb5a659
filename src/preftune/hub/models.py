"""`preftune push`: a run folder → a Hugging Face Hub model repo with a model card.

    preftune push RUN_DIR [--repo-id OWNER/NAME] [--private] [--dry-run [--stage-dir DIR]]
    preftune push ROOT --best N [--rank-by METRIC] [--namespace ORG]
    preftune push RM_DIR [--repo-id OWNER/NAME] ...        a reward model folder (preftune.hub.rm)

Each run is first staged into an upload folder (hard links to the run's files where the filesystem
allows): the model as `save_pretrained` wrote it, the run's configs, log, metrics and held-out pairs,
`training_curves.png`, and README.md — the model card, with Hub metadata (base_model, datasets, tags,
license, model-index holding the eval metrics), hyperparameters, data, metrics, the curves and a usage
snippet. Every metric block and model-index entry names the data and split it was computed on, and
whether that is the run's held-out data, data the training set is a part of, or another dataset; each
result file is its own model-index entry (the Hub groups entries by dataset type, config and split,
not by name). Then `create_repo(exist_ok=True)` + `upload_folder`; unchanged files are not re-sent and
an unchanged run makes no new commit, so pushing twice is harmless. `--dry-run` stops after staging.

Nothing destructive: pushing reads a run folder and never writes inside it. A dry run's --stage-dir that
is, is inside, or contains a run being pushed (ROOT included), that is a file or device, or that cannot be
written, is refused before any work; an existing upload folder is replaced only when preftune staged it.
`--best N` ranks runs on validation (--rank-by, as `preftune report`), never picks a run without a valid
value of that metric, and refuses runs scored on different validation data. The staging, the token and
the Hub errors here are shared by the reward model and dataset pushes (preftune.hub.rm, preftune.hub.data).

The token comes from HF_TOKEN or the `hf auth login` cache (`huggingface_hub.get_token`). It is handed
to the client and nowhere else: never printed, logged, or written into a file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from preftune import fmt
from preftune.config import DEFAULT_MODEL, PushConfig
from preftune.errors import PreftuneError
from preftune.hubids import is_hub_id
from preftune.runs import folder as run_folder
from preftune.runs.folder import Run, open_run
from preftune.sweep.leaderboard import RANKINGS, data_groups, dataset_label, leaderboard
from preftune.sweep.plots import CURVES_NOTE, plot_curves

logger = logging.getLogger(__name__)

# training_args.bin: a pickle of the Trainer's arguments, unsafe to load and of no use to a reader;
# preferences.jsonl: the demo's votes, people's input: published only on purpose, with `preftune data push`;
# tracking.json: local paths of the run's experiment tracker
NOT_UPLOADED = {"training_args.bin", "preferences.jsonl", "tracking.json"}
NOT_UPLOADED_DIRS = {run_folder.CHECKPOINTS_DIR}
CURVES = "training_curves.png"
CARD = "README.md"
WRITTEN = {CURVES, CARD}  # written fresh into the upload folder, never linked: a link would write into the run
STAGE_MARK = ".preftune-stage"  # in a --stage-dir: preftune staged the folders here, so it may replace them
DEFAULT_STAGE = "hub_upload"
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


def base_model_of(run: Run, override: str | None) -> str | None:
    """The base model's Hub id, when there is one (a local folder has none unless given)."""
    spec = override or run.reference_model
    if not is_hub_id(spec):  # e.g. an SFT run folder: the chain's base, when that is a hub id
        spec = str(run.chain[0].get("model", ""))
    return spec if is_hub_id(spec) else None


def license_of(base_model: str | None, run: Run, override: str | None) -> str:
    """--license, else the base model's (known ids, or a local base folder's own card), else 'other'."""
    if override:
        return override
    if base_model in KNOWN_LICENSES:
        return KNOWN_LICENSES[base_model]
    readme = Path(run.reference_model) / CARD
    if readme.is_file():
        from huggingface_hub import ModelCard

        license_ = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict().get("license")
        if isinstance(license_, str):
            return license_
    return "other"


def hub_dataset(dataset: str) -> str | None:
    return HUB_DATASETS.get(dataset) or (dataset if is_hub_id(dataset) else None)


def data_relation(dataset: str, run: Run) -> str:
    """How the data a result was computed on stand to the run's training data: "own" (the same spec:
    its held-out split is the run's own), "related" (another name of the same data, e.g. the full
    openai/summarize_from_feedback of which tldr-sample is a part: its held-out split may hold posts
    the run trained on) or "other" (a dataset the run was not trained on: transfer)."""
    if dataset == run.dataset:
        return "own"
    ours, theirs = hub_dataset(run.dataset), hub_dataset(dataset)
    return "related" if ours and ours == theirs else "other"


CARD_METRICS = [("accuracy", "accuracy", "preference accuracy (DPO implicit reward)"),
                ("length_balanced_accuracy", "length_balanced_accuracy",
                 "length-balanced accuracy (mean over chosen-longer and chosen-shorter pairs)"),
                ("mean_margin", "mean_reward_margin", "mean reward margin, chosen − rejected"),
                ("mean_logp_drift", "mean_logp_drift", "mean log-prob drift from the base model")]


STRATUM_METRICS = {"chosen_longer": "accuracy where the chosen summary is longer",
                   "chosen_shorter": "accuracy where the chosen summary is shorter"}


# What each kind of result is, in a block's title and in its model-index dataset name.
TITLES = {"held-out": " (held out from training)",
          "own": " (the run's own data, re-prepared by `preftune eval --dataset`)",
          "related": " (overlaps the training data: not held out)",
          "other": " (another dataset: transfer)"}
INDEX_NOTES = {"held-out": "", "own": "", "related": "; may overlap the training data",
               "other": "; transfer: not the training data"}


def result_kind(name: str, m: dict, run: Run) -> tuple[str, str, str]:
    """(split, dataset spec, kind) of a result file; kind is "held-out" for the run's own eval.json /
    test.json, else data_relation's answer for the dataset it names."""
    split, dataset = m.get("split") or "validation", m.get("dataset") or run.dataset
    own_file = name in (run_folder.EVAL_FILE, run_folder.TEST_FILE)
    return split, dataset, "held-out" if own_file else data_relation(dataset, run)


def index_datasets(results: list[tuple[str, dict]], run: Run) -> list[tuple[str, str | None, str, str]]:
    """(type, config, split, name) of each result's model-index dataset, one distinct (type, config,
    split) per result file: the Hub groups a model-index by those (not by name), so two results sharing
    them would be published as one, under the first one's name. Type: the hub id (or "local"); config: the
    run's --hub-config for its own data, the hub dataset's default config (comparisons for
    openai/summarize_from_feedback) for other data, and where that collides, the data's name, then the
    result file's name (unique in the run folder)."""
    from preftune.data.sources import HUB_DEFAULT_CONFIGS

    out, seen = [], set()
    for name, m in results:
        split, dataset, kind = result_kind(name, m, run)
        label = f"{dataset_label(dataset)} ({split} split{INDEX_NOTES[kind]})"
        type_ = hub_dataset(dataset) or "local"
        config = run.config["data"].get("hub_config") if kind in ("held-out", "own") else HUB_DEFAULT_CONFIGS.get(type_)
        config = next((c for c in (config, dataset_label(dataset)) if (type_, c, split) not in seen), name)
        seen.add((type_, config, split))
        out.append((type_, config, split, label))
    return out


def eval_results(results: list[tuple[str, dict]], run: Run):
    """model-index entries: every result's headline metrics, as the Hub's EvalResult, each naming the
    data and split it was computed on (and whether that is the run's held-out data)."""
    from huggingface_hub import EvalResult

    entries = []
    for (name, m), (type_, config, split, label) in zip(results, index_datasets(results, run)):
        values = [(metric, title, m.get(key)) for key, metric, title in CARD_METRICS]
        values += [(f"accuracy_{key}", title, (m.get(key) or {}).get("accuracy"))
                   for key, title in STRATUM_METRICS.items()]
        entries += [EvalResult(task_type="text-generation", task_name="Preference ranking of summaries",
                               dataset_type=type_, dataset_config=config, dataset_name=label, dataset_split=split,
                               metric_type=metric, metric_name=title, metric_value=value)
                    for metric, title, value in values if value is not None]
    return entries


def result_rows(m: dict) -> list[tuple[str, str]]:
    """A result file as model-card rows, with intervals and n."""
    rows = [("preference accuracy (implicit reward)", fmt.with_ci(m.get("accuracy"), m.get("accuracy_ci95"), m.get("n"))),
            ("length-balanced accuracy (length alone scores 0.5)",
             fmt.with_ci(m.get("length_balanced_accuracy"), m.get("length_balanced_ci95"), None, "Agresti–Caffo"))]
    for key, label in (*STRATUM_METRICS.items(), ("equal_length", "accuracy where both summaries are equally long")):
        s = m.get(key) or {}
        if key != "equal_length" or s.get("n"):
            rows.append((label, fmt.with_ci(s.get("accuracy"), s.get("ci95"), s.get("n"))))
    rows += [(label, fmt.number(m.get(key))) for key, label in [
        ("longer_wins_baseline", "'longer summary wins' baseline on the same pairs"),
        ("mean_margin", "mean reward margin"), ("mean_chosen_reward", "mean reward, chosen"),
        ("mean_rejected_reward", "mean reward, rejected"),
        ("mean_logp_drift", "mean log-prob drift from the base model"),
        ("reference_logp_accuracy", "base model's own likelihood accuracy")]]
    rows += [(f"accuracy at labeller confidence {group}", fmt.with_ci(s.get("accuracy"), s.get("ci95"), s.get("n")))
             for group, s in (m.get("accuracy_by_confidence") or {}).items()]
    return rows


def _runs(n) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


def result_note(name: str, m: dict, run: Run, kind: str) -> str:
    """What the pairs of a result are, and whether training could have seen them."""
    split, label = m.get("split") or "validation", dataset_label(m.get("dataset") or run.dataset)
    n, posts, unit = fmt.number(m.get("n")), fmt.number(m.get("posts")), m.get("length_unit") or "characters (an older preftune)"
    if kind in ("held-out", "own"):
        return (f"{n} preference pairs from {posts} posts that training never saw (the split is by post), in "
                f"`{name}`; lengths in {unit}.")
    prepared = f"prepared with this run's fractions and seed, in `{name}`; lengths in {unit}."
    if kind == "related":
        return (f"{n} preference pairs from {posts} posts of the {split} split of `{label}`, {prepared} The run was "
                f"trained on `{dataset_label(run.dataset)}`, a part of the same data, so some of these posts may have "
                "been in its training split: **not a held-out measure**.")
    return (f"{n} preference pairs from {posts} posts (or documents) of the {split} split of `{label}`, a dataset this "
            f"run was not trained on, {prepared} A transfer measure: not comparable with the run's own held-out "
            "numbers.")


def result_block(name: str, m: dict, run: Run) -> dict:
    """One labelled block of the card: which data and split the metrics were computed on, and how."""
    split, dataset, kind = result_kind(name, m, run)
    note = result_note(name, m, run, kind)
    selection = m.get("selection") or {}
    if split == "validation" and kind == "held-out":
        note += " Runs are compared and chosen on this split."
    elif split == "test" and kind == "held-out" and selection:
        note += (f" Computed once, after this run was chosen on validation {RANKINGS.get(selection.get('rank_by'), '')}"
                 f" from {_runs(selection.get('runs_compared'))} compared (rank {selection.get('rank')}); never used "
                 "for choosing.")
    elif split == "test" and kind == "held-out":
        note += " Computed with `preftune eval --split test`."
    if kind == "held-out" and m.get("fingerprint") and m["fingerprint"] != run.fingerprint(split):
        note += " **Stale**: the weights or pairs changed after it was computed."
    return {"title": f"{split} split of `{dataset_label(dataset)}`{TITLES[kind]}", "note": note,
            "rows": result_rows(m)}


def judge_rows(judge: dict | None) -> list[tuple[str, str]]:
    judged = run_folder.judge_summary(judge)
    if judged.get("judge_win_rate") is None:
        return []
    return [("judged win rate over the base model (greedy, reward-model judge)",
             fmt.with_ci(judged["judge_win_rate"], judged["judge_win_rate_ci95"], judged["judge_n"], method=None)),
            ("length-controlled judged win rate", fmt.number(judged["judge_length_controlled_win_rate"])),
            ("judge's verdict strength", f"{judged['judge_verdict_strength']} (reward model held-out accuracy "
                                         f"{fmt.number(judged['judge_rm_accuracy'])})")]


def judge_title(judge: dict | None, run: Run) -> str:
    """The judge block's title: the judge summarizes posts of the run's own validation split."""
    posts = (judge or {}).get("posts")
    count = f", {posts:,} posts" if isinstance(posts, int) and not isinstance(posts, bool) else ""
    return f"Judged generations (validation split of `{dataset_label(run.dataset)}`{count})"


def model_card(run_dir: Path, repo_id: str, cfg: PushConfig):
    """The README.md of the repo, as a huggingface_hub ModelCard (YAML metadata + Markdown). Reads the
    run through run_folder: a damaged file is an error naming it, before anything is staged."""
    from huggingface_hub import ModelCard, ModelCardData

    run = open_run(run_dir)
    metrics = run.metrics() or {}
    order = {run_folder.EVAL_FILE: 0, run_folder.TEST_FILE: 1}
    results = sorted(run.results(), key=lambda r: (order.get(r[0], 2), r[0]))
    judge = run.judge() or {}
    data, train = run.config["data"], run.train
    base = base_model_of(run, cfg.base_model)
    dataset = run.dataset
    dataset_id = hub_dataset(dataset)
    name = repo_id.split("/")[-1]
    tags = ["dpo", "preftune", "text-generation"] + (["trl"] if train.get("engine") == "trl" else []) \
        + (["lora"] if train.get("lora") else [])
    card_data = ModelCardData(
        base_model=base, datasets=[dataset_id] if dataset_id else None, license=license_of(base, run, cfg.license),
        library_name="transformers", pipeline_tag="text-generation", tags=tags, model_name=name,
        eval_results=eval_results(results, run) or None,
    )
    fit = run.config.get("fit") if isinstance(run.config.get("fit"), dict) else {}
    hyperparameters = [(k.replace("_", " "), fmt.setting(train.get(k))) for k in
                       ("lr", "batch_size", "epochs", "beta", "loss", "max_length", "engine", "lora", "grad_accum")]
    hyperparameters += [("optimizer steps", fmt.number(metrics.get("steps"))),
                        ("train time (s)", fmt.number(metrics.get("train_runtime_s"), 1)),
                        ("tokens/s", fmt.number(metrics.get("tokens_per_s"), 1)), ("seed", fmt.number(data.get("seed")))]
    if train.get("lora"):
        hyperparameters += [("LoRA r / alpha / targets",
                             f"{train.get('lora_r')} / {train.get('lora_alpha')} / {train.get('lora_targets')}")]
    evaluation = dict(results).get(run_folder.EVAL_FILE) or {}

    def trimmed(split: str) -> str:
        return fmt.number((fit.get(split) or {}).get("trimmed") if isinstance(fit.get(split), dict) else None)

    data_rows = [("dataset", f"`{dataset_label(dataset)}`" + (f" ([{dataset_id}](https://huggingface.co/datasets/{dataset_id}))"
                                             if dataset_id else "")),
                 ("fraction of the cleaned pairs used", fmt.setting(data.get("fraction"))),
                 ("validation fraction of posts", fmt.setting(data.get("eval_fraction"))),
                 ("test fraction of posts", fmt.setting(data.get("test_fraction")) if run.has_test_split else
                  "none (the run predates the test split)"),
                 ("split", "by post: no post in two of train / validation / test"),
                 ("training pairs", fmt.number(metrics.get("train_pairs"))),
                 ("validation pairs scored", fmt.number(evaluation.get("n"))),
                 ("pairs with their post trimmed to fit max_length",
                  f"{trimmed('train')} train, {trimmed('eval')} validation"
                  + (f", {trimmed('test')} test" if "test" in fit else ""))]
    from importlib.resources import files

    return ModelCard.from_template(
        card_data, template_str=files("preftune").joinpath("templates/model_card.md.j2").read_text(),
        name=name, repo_id=repo_id, preftune_version=run.config.get("preftune_version", "?"),
        base_model_text=f"[{base}](https://huggingface.co/{base})" if base else
        f"A local model (`{Path(str(train['model'])).name}`)",
        dataset_text=f"`{dataset_label(dataset)}`" + (f" (from [{dataset_id}](https://huggingface.co/datasets/{dataset_id}))"
                                       if dataset_id else ""),
        blocks=[result_block(n, m, run) for n, m in results], judge_rows=judge_rows(judge),
        judge_title=judge_title(judge, run), curves_note=CURVES_NOTE,
        hyperparameters=hyperparameters, data_rows=data_rows,
        example_prompt=json.dumps(_example_prompt(run), ensure_ascii=False),
        lora=bool(train.get("lora")), tldr=dataset_id == "openai/summarize_from_feedback",
        judge_verdict=[str(v) for v in judge["verdict"]] if isinstance(judge.get("verdict"), list) else [],
        has_test=run.has_test_split, chain=run_folder.chain_text(run.chain, settings=True),
    )


def _example_prompt(run: Run) -> str:
    prompts = [p.prompt for p in run.eval_pairs()] if (run.path / run_folder.EVAL_PAIRS_FILE).is_file() else []
    return min(prompts, key=len) if prompts else "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:"


# ---- staging -------------------------------------------------------------------------------------


def check_run(run_dir: Path) -> Run:
    """A finished run folder with a model to upload."""
    run = open_run(run_dir)
    run.require_model()
    return run


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
