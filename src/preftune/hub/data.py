"""`preftune data push DIR --repo-id OWNER/NAME`: preference pairs → a Hugging Face Hub dataset repo.

DIR is a prepared folder (its splits pushed as they are) or the demo's `preferences.jsonl` (cleaned as
`data prepare` reads it, one `train` split). The repo holds one Parquet file per split, which
`datasets.load_dataset("OWNER/NAME")` reads back row for row, and a dataset card (source, license, counts,
skips, the split rule and seed; OpenAI's data carries its Modified MIT notice). Staging, safety and the
token are hub/upload.py's. Details: docs/sweeps-and-hub.md.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import preftune
from preftune import fmt
from preftune.config import DataPushConfig
from preftune.data.folder import SPLIT_FILES, STATS_FILE, is_prepared_dir, load_prepared
from preftune.data.pairs import Pair
from preftune.data.sources import SHIPPED, broken_link, path_kind
from preftune.errors import PreftuneError
from preftune.hub.card import hub_dataset
from preftune.hub.upload import (
    CARD,
    DEFAULT_STAGE,
    TOKEN_HELP,
    Upload,
    claim_stage,
    fresh_folder,
    hub_errors,
    hub_token,
    publish,
)
from preftune.runs.folder import CONFIG_FILE, RM_CONFIG_FILE
from preftune.sweep.leaderboard import dataset_label

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
PREFERENCES_FILE = "preferences.jsonl"
RAW_FILE = "raw/preferences.jsonl"
LICENSE_FILE = "LICENSE"
TLDR = "openai/summarize_from_feedback"  # the shipped sample is a part of it (preftune.hub.card.HUB_DATASETS)
WHAT = ("pass a folder written by `preftune data prepare` (train.jsonl, eval.jsonl, test.jsonl, stats.json), or the "
        f"demo's {PREFERENCES_FILE} or the folder holding it")

# The columns of every split: (name, what it holds). Their Arrow types are SCHEMA's.
COLUMNS = [
    ("prompt", "the prompt the completions answer (TL;DR: `SUBREDDIT: r/…\\nTITLE: …\\nPOST: …\\nTL;DR:`)"),
    ("chosen", "the completion the person preferred"),
    ("rejected", "the other completion"),
    ("post_id", "the post (or prompt) the pair belongs to: a split keeps all pairs of a post together"),
    ("source", "the file and line (or row) the pair was read from, without folders"),
    ("body_span", "[start, end) character span of `prompt` that may be trimmed to fit a length limit (the post), "
                  "or null"),
    ("cut", "how `body_span` is trimmed: `end` (keep its start), `start` (keep its end), `turns` (drop whole turns)"),
    ("turns", "for cut = turns: offsets in `prompt` where a droppable turn ends"),
    ("meta", "a JSON object: what the source row said besides the pair (labeller confidence, the policies that "
             "wrote the completions, batch, …)"),
]


def schema():
    import pyarrow as pa

    text, offsets = pa.string(), pa.list_(pa.int64())
    types = {"body_span": offsets, "turns": offsets}
    return pa.schema([(name, types.get(name, text)) for name, _ in COLUMNS])


@dataclass
class Source:
    """What `data push` was given, read and checked."""

    kind: str  # "prepared" | "preferences"
    path: Path  # the file or folder read
    protected: Path  # never written, nor staged into: the folder given (or the run folder holding the file given,
    # or the file); the default stage folder is beside it
    splits: dict[str, list[Pair]]
    stats: dict  # prepared: stats.json; preferences: the rows read and skipped
    raw: Path | None = None  # the demo's votes, uploaded as they are

    @property
    def dataset(self) -> str:
        """The dataset the pairs were prepared from (the votes file for the demo's)."""
        return str(_section(self.stats, "config").get("dataset") or self.path.name)

    @property
    def tldr(self) -> bool:
        """From OpenAI's summarize_from_feedback (the shipped sample, or the hub dataset)?"""
        return self.kind == "prepared" and hub_dataset(self.dataset) == TLDR


# ---- reading DIR ---------------------------------------------------------------------------------


def open_source(spec: str) -> Source:
    """DIR as a prepared folder or the demo's votes, every line read and checked: a missing path, a folder
    that is neither, a damaged stats.json or line, or nothing to push is one error naming what and where."""
    if not spec or not spec.strip():
        raise PreftuneError(f"DIR is empty: {WHAT}")
    path = Path(spec).expanduser()
    kind = path_kind(path)
    if kind == "missing":
        raise PreftuneError(f"{spec}: no such file or folder: {WHAT}")
    if kind == "broken link":
        raise broken_link(path)
    if kind == "other":
        raise PreftuneError(f"{spec}: not a regular file or a folder (a device, pipe or socket): {WHAT}")
    path = path.resolve()
    if kind == "file":  # in a run folder (where `preftune serve` writes it) the whole folder is protected
        return preferences_source(path, path.parent if (path.parent / CONFIG_FILE).is_file() else path)
    if is_prepared_dir(str(path)):
        return prepared_source(path)
    if path_kind(path / PREFERENCES_FILE) == "file":
        return preferences_source(path / PREFERENCES_FILE, path)
    raise PreftuneError(f"{spec} is neither a prepared folder nor a folder holding {PREFERENCES_FILE}{_why(path)}: "
                        f"{WHAT}")


def _why(folder: Path) -> str:
    """What the folder is instead, when that can be told."""
    if (folder / CONFIG_FILE).is_file():
        return " (it is a run folder without the demo's votes; `preftune push` pushes its model)"
    if (folder / RM_CONFIG_FILE).is_file():
        return " (it is a reward model folder; `preftune push` pushes it)"
    if (folder / STATS_FILE).is_file():
        return f" (its {STATS_FILE} was not written by `preftune data prepare`)"
    if (folder / SPLIT_FILES["train"]).exists():
        return f" (it has {SPLIT_FILES['train']} but no {STATS_FILE}: prepare the data again)"
    return ""


def prepared_source(folder: Path) -> Source:
    prepared = load_prepared(folder)  # checks every line, the splits' disjointness, a non-empty train split
    return Source("prepared", folder, folder, prepared.splits(), prepared.stats)


def preferences_source(file: Path, protected: Path) -> Source:
    """The demo's votes, read as `data prepare` reads summarize_from_feedback rows, cleaned the same way."""
    from preftune.config import DataConfig
    from preftune.data.prepare import Reading, iter_pairs, resolve_labels
    from preftune.data.split import split_stats

    reading = Reading()
    cfg = DataConfig(dataset=str(file), format="summarize_from_feedback")
    pairs = resolve_labels(list(iter_pairs(cfg, reading)), reading.tally)
    if not pairs:
        raise PreftuneError(f"{file}: no votes left to push ({reading.tally.summary()})")
    stats = {"format": "summarize_from_feedback", "rows": reading.tally.to_json(), "train": split_stats(pairs)}
    return Source("preferences", file, protected, {"train": pairs, "validation": [], "test": []}, stats, raw=file)


# ---- rows and Parquet ----------------------------------------------------------------------------


def public_source(source: str) -> str:
    """"file:line" without the folders of the machine the data were prepared on; the shipped sample's
    and hub datasets' labels are kept as they are."""
    where, colon, line = source.rpartition(":")
    if not colon or not line.isdigit():
        where, line = source, ""
    if "[" not in where and where.split("/")[0] not in SHIPPED:
        where = re.split(r"[\\/]", where)[-1]
    return f"{where}:{line}" if line else where


def row_of(pair: Pair) -> dict:
    """A pair as one row of the dataset (see the module docstring)."""
    row = pair.to_json()
    return {**row, "source": public_source(pair.source), "body_span": list(pair.body_span) if pair.body_span else None,
            "turns": list(pair.turns), "meta": json.dumps(pair.meta, ensure_ascii=False, sort_keys=True)}


def pair_of(row: dict) -> Pair:
    """The inverse of row_of (but for the folders left out of `source`)."""
    return Pair.from_json({**row, "meta": json.loads(row["meta"])})


def write_parquet(pairs: list[Pair], path: Path) -> int:
    """One split as a Parquet file (deterministic bytes: pushing the same pairs again changes nothing).
    Returns the Arrow size of the table, `dataset_info`'s num_bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([row_of(p) for p in pairs], schema=schema())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.nbytes


def split_file(split: str) -> str:
    return f"data/{split}-00000-of-00001.parquet"


# ---- the dataset card ----------------------------------------------------------------------------


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _section(stats: dict, key: str) -> dict:
    """stats[key] when it is an object, else {} (stats.json is the user's file too: its values are shown
    as they are where they fit, n/a where they do not)."""
    value = stats.get(key)
    return value if isinstance(value, dict) else {}


def card_metadata(source: Source, pushed: dict[str, tuple[int, int]], sizes: dict[str, int], cfg: DataPushConfig):
    """The YAML of the card: license, tags, size, and `configs` + `dataset_info` as `datasets` writes them.
    pushed: split → (rows, Arrow bytes); sizes: split → Parquet bytes."""
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    license_ = {"license": cfg.license} if cfg.license else (
        {"license": "other", "license_name": "openai-summarize-from-feedback-modified-mit", "license_link": LICENSE_FILE}
        if source.tldr else {"license": "unknown"})
    total = sum(n for n, _ in pushed.values())
    data = DatasetCardData(
        **license_, pretty_name=cfg.repo_id.split("/")[1], size_categories=[size_category(total)],
        task_categories=["text-generation"], tags=["preftune", "dpo", "preference", "human-feedback"],
        language=["en"] if source.tldr else None, source_datasets=[f"extended|{TLDR}"] if source.tldr else None)
    splits = SplitDict({s: SplitInfo(s, num_bytes, n) for s, (n, num_bytes) in pushed.items()})
    info = DatasetInfo(features=datasets.Features.from_arrow_schema(schema()), splits=splits,
                       download_size=sum(sizes.values()), dataset_size=sum(b for _, b in pushed.values()))
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs({"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in pushed]}}) \
        .to_dataset_card_data(data)
    return data


def split_rows(source: Source) -> list[tuple]:
    """(split, pairs, posts, 'longer wins', batches) per split; an empty split says it is not in the repo."""
    rows = []
    for split in SPLITS:
        pairs = source.splits[split]
        if not pairs:
            if source.kind == "prepared":
                rows.append((split, "0 (not in the repo)", "0", "n/a", ""))
            continue
        longer = sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs)
        batches = Counter(str(p.meta.get("batch")) for p in pairs if p.meta.get("batch"))
        rows.append((split, f"{len(pairs):,}", f"{len({p.post_id for p in pairs}):,}", fmt.number(longer, 3),
                     ", ".join(f"{b} ({n:,})" for b, n in sorted(batches.items()))))
    return rows


def split_rule(source: Source) -> str:
    if source.kind == "preferences":
        return ("Not split: every vote is in `train`. Hold out whole posts before training on it (`preftune data prepare "
                "--dataset OWNER/NAME` splits by `post_id`).")
    config, fraction = _section(source.stats, "config"), _section(source.stats, "fraction")
    return (f"By post: all pairs of a post are in one split, so no post is in two of train / validation / test. "
            f"Validation takes {fmt.setting(config.get('eval_fraction'))} and test {fmt.setting(config.get('test_fraction', 0.0))} "
            f"of the pairs, as whole posts, drawn with seed {fmt.setting(config.get('seed'))}; before that, a fraction "
            f"{fmt.setting(config.get('fraction'))} of the {fmt.number(fmt.count(fraction.get('of')))} cleaned pairs was sampled "
            f"with the same seed ({fmt.number(fmt.count(fraction.get('taken')))} pairs).")


def row_counts(source: Source) -> list[tuple[str, str]]:
    """Rows read, kept and skipped (each reason with its count), from the reading's tally."""
    rows = _section(source.stats, "rows")
    skipped = rows.get("skipped") if isinstance(rows.get("skipped"), dict) else {}
    out = [("rows read", fmt.number(fmt.count(rows.get("total")))), ("pairs kept after cleaning", fmt.number(fmt.count(rows.get("kept"))))]
    out += [(f"skipped: {reason}", fmt.number(fmt.count(n))) for reason, n in sorted(skipped.items(), key=lambda kv: str(kv[0]))]
    if not skipped:
        out.append(("skipped", "none"))
    return out


def policy_rows(source: Source) -> list[tuple[str, str]]:
    """For the demo's votes: how often each model's summary was the preferred one."""
    votes = [p.meta for p in source.splits["train"]]
    chosen = Counter(str(m.get("chosen_policy")) for m in votes)
    shown = Counter(str(m.get(k)) for m in votes for k in ("chosen_policy", "rejected_policy"))
    return [(policy, f"preferred {chosen[policy]:,} of {n:,} times") for policy, n in sorted(shown.items())]


def origin_text(source: Source) -> str:
    label = dataset_label(source.dataset)
    dataset_id = hub_dataset(source.dataset)
    link = f" (from [{dataset_id}](https://huggingface.co/datasets/{dataset_id}))" if dataset_id else ""
    if source.kind == "prepared":
        fmt = source.stats.get("format") if isinstance(source.stats.get("format"), str) else "n/a"
        return (f"Prepared by `preftune data prepare` from `{label}`{link}, read in the `{fmt}` format, cleaned "
                "(duplicate and conflicting labels resolved by majority), sampled and split by post.")
    return ("Votes collected in preftune's demo (`preftune serve`): for a post, two summaries written by the models "
            "named in `meta` (`chosen_policy`, `rejected_policy`), and the one the person preferred. Read from "
            f"`{source.path.name}` as `preftune data prepare` reads summarize_from_feedback rows; the file as the demo "
            f"wrote it is `{RAW_FILE}`.")


def license_text(source: Source, cfg: DataPushConfig) -> str:
    if cfg.license:
        return f"License: `{cfg.license}` (as stated with `--license` when it was pushed)."
    if source.tldr:
        return ("The comparisons (summaries, labels) are © 2020 OpenAI, from "
                "[openai/summarize-from-feedback](https://github.com/openai/summarize-from-feedback), under its "
                f"Modified MIT License, reproduced in full in [`{LICENSE_FILE}`]({LICENSE_FILE}) and below. The Reddit "
                "post text comes from the Webis-TLDR-17 corpus ([Zenodo record 1168855](https://zenodo.org/record/1168855)) "
                "and keeps its own terms.\n\n```text\n" + tldr_license() + "```\n\n**Content note**: the posts are "
                "unfiltered Reddit text, mostly from r/relationships, and include sensitive topics.")
    if source.kind == "preferences":
        return ("License: not stated (`unknown`). The posts are what the demo's users entered or picked (the demo offers "
                "held-out posts of the run's data, which keep their source's terms); the summaries were written by the "
                "models named in `meta`. Pass `--license ID` to state the terms.")
    return (f"License: not stated (`unknown`): preftune does not know the terms of `{dataset_label(source.dataset)}`, "
            "and they apply to these pairs. Pass `--license ID` to state them.")


def tldr_license() -> str:
    return files("preftune").joinpath("templates/summarize_from_feedback_LICENSE.txt").read_text(encoding="utf-8")


def dataset_card(source: Source, pushed: dict[str, tuple[int, int]], sizes: dict[str, int], cfg: DataPushConfig):
    from huggingface_hub import DatasetCard

    return DatasetCard.from_template(
        card_metadata(source, pushed, sizes, cfg),
        template_str=files("preftune").joinpath("templates/dataset_card.md.j2").read_text(encoding="utf-8"),
        name=cfg.repo_id.split("/")[1], repo_id=cfg.repo_id, version=preftune.__version__,
        origin=origin_text(source), splits=split_rows(source), pushed=list(pushed), split_rule=split_rule(source),
        counts=row_counts(source), policies=policy_rows(source) if source.kind == "preferences" else [],
        columns=COLUMNS, license=license_text(source, cfg), tldr=source.tldr,
        prepared=source.kind == "prepared")


# ---- staging and pushing -------------------------------------------------------------------------


def stage_dataset(source: Source, folder: Path, cfg: DataPushConfig) -> Upload:
    """The upload folder: a Parquet file per non-empty split, the card (and LICENSE, the raw votes)."""
    import os
    import shutil

    fresh_folder(folder)
    pushed, sizes = {}, {}
    for split in SPLITS:
        if source.splits[split]:
            path = folder / split_file(split)
            pushed[split] = (len(source.splits[split]), write_parquet(source.splits[split], path))
            sizes[split] = path.stat().st_size
        elif source.kind == "prepared":
            logger.info(f"data push: the {split} split of {source.path} is empty: it is left out of the repo (the card "
                        "says so)")
    dataset_card(source, pushed, sizes, cfg).save(folder / CARD)
    if source.tldr and not cfg.license:
        (folder / LICENSE_FILE).write_text(tldr_license(), encoding="utf-8")
    if source.raw is not None:
        raw = folder / RAW_FILE
        raw.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source.raw, raw)  # never written through: the folder is replaced, not edited
        except OSError:
            shutil.copy2(source.raw, raw)
    return Upload(source.path, cfg.repo_id, folder)


def check_hub_repo_id(repo_id: str) -> None:
    """The Hub's own rules for a repo name (beyond OWNER/NAME), before any request."""
    from huggingface_hub.utils import validate_repo_id

    with hub_errors(repo_id):
        validate_repo_id(repo_id)


def push_dataset(spec: str, cfg: DataPushConfig) -> Upload:
    """Read and check DIR, stage it, then upload it (or, with --dry-run, only stage it)."""
    check_hub_repo_id(cfg.repo_id)
    source = open_source(spec)
    name = f"datasets/{cfg.repo_id.split('/')[1]}"
    what = ("the prepared folder" if source.kind == "prepared" else
            "the folder holding the votes" if source.protected.is_dir() else "the votes file")
    if cfg.dry_run:
        stage_root = claim_stage(cfg.stage_dir, source.protected.parent / DEFAULT_STAGE, [source.protected], [name],
                                 what)
    elif cfg.stage_dir is not None:
        logger.warning("warning: --stage-dir is used only with --dry-run; uploading from a temporary folder")
    token = hub_token()
    if token is None and not cfg.dry_run:
        raise PreftuneError(f"no Hugging Face token found: {TOKEN_HELP}")
    with tempfile.TemporaryDirectory(prefix="preftune-push-") as tmp:
        plan = stage_dataset(source, (stage_root if cfg.dry_run else Path(tmp)) / name, cfg)
        publish(plan, cfg, token, repo_type="dataset")
    return plan
