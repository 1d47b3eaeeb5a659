"""`preftune data push`: a prepared folder (its three splits) and the demo's captured votes go to the
local Hub server (tests/hub_server.py) as dataset repos, through the real huggingface_hub client, and
come back through the real `datasets.load_dataset("OWNER/NAME")` row for row; the card's `configs` and
`dataset_info` are read back with `DatasetCard.load`. Bad input is one line, exit 2."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import comparison
from hub_server import HubServer

from preftune.cli import main
from preftune.config import DataConfig
from preftune.data.prepare import prepare, write_prepared
from preftune.hub.data import pair_of, public_source, row_of
from preftune.serve.feedback import append_jsonl, comparison_row

TOKEN = "hf_PreftuneDataSecret51d0c2e8a4"
USER = "tester"


@pytest.fixture(scope="module")
def hub():
    with HubServer({TOKEN: USER, "hf_OtherUserToken": "someone"}) as server:
        server.add_repo("someone/their-data", type_="dataset")
        yield server


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The shipped TL;DR sample prepared at 5%: 61 / 8 / 8 pairs (seed 7)."""
    folder = tmp_path_factory.mktemp("data") / "prepared"
    write_prepared(prepare(DataConfig(fraction=0.05, seed=7)), folder)
    return folder


def vote(post: str, texts: list[str], choice: int, policies=("tuned", "base")) -> dict:
    return comparison_row(hashlib.sha1(post.encode()).hexdigest()[:12], "test", "A title", post, texts,
                          list(policies), choice, {"sampling": {"temperature": 0.7}, "implicit_rewards": [0.1, -0.2]})


@pytest.fixture
def votes(tmp_path) -> Path:
    """A run folder holding the demo's preferences.jsonl, as `preftune serve` appends it: 6 votes on 4
    posts; one repeated (a duplicate label) and one of two identical summaries (skipped)."""
    run = tmp_path / "runs" / "dpo_model_lr5e-06_bs4_epoch1"
    run.mkdir(parents=True)
    (run / "preftune_config.json").write_text("{}")
    file = run / "preferences.jsonl"
    for row in (vote("I adopted a cat and it hates my dog.", [" Cat hates dog.", " New cat, old dog, trouble."], 1),
                vote("My landlord raised the rent by 40%.", [" Rent up 40%.", " Landlord greedy."], 0),
                vote("My landlord raised the rent by 40%.", [" Rent up 40%.", " Landlord greedy."], 0),
                vote("I got the job after five interviews!", [" Got the job.", " Five interviews."], 0, ("base", "tuned")),
                vote("Should I learn the violin at 40?", [" Violin at 40?", " Violin at 40?"], 1),
                vote("My brother borrowed my car and crashed it.", [" Brother crashed my car.", " Car gone."], 0)):
        append_jsonl(file, row)
    return run


def env_for(hub, home: Path, token: str | None = TOKEN, endpoint: str | None = None) -> dict:
    env = {**os.environ, "HF_ENDPOINT": endpoint or hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(key, None)
    if token:
        env["HF_TOKEN"] = token
    return env


def data_push(hub, *args, home: Path, token: str | None = TOKEN, endpoint=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preftune", "data", "push", *map(str, args)],
                          env=env_for(hub, home, token, endpoint), capture_output=True, text=True, timeout=180)


READ_BACK = textwrap.dedent("""
    import json, sys
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    ds = load_dataset(sys.argv[1])
    card = DatasetCard.load(sys.argv[1], repo_type="dataset").data.to_dict()
    print(json.dumps({"splits": {name: split.to_list() for name, split in ds.items()}, "card": card}))
""")


def load_back(hub, repo_id: str, home: Path) -> dict:
    """`datasets.load_dataset(repo_id)` against the local Hub, in a fresh process (HF_ENDPOINT is read at
    import); the rows of every split, and the card's metadata."""
    done = subprocess.run([sys.executable, "-c", READ_BACK, repo_id], env=env_for(hub, home), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_prepared_folder_round_trips_through_load_dataset(hub, prepared, tmp_path):
    from preftune.data.folder import load_prepared

    repo_id = f"{USER}/tldr-pairs"
    before = hashes(prepared)
    pushed = data_push(hub, prepared, "--repo-id", repo_id, home=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert f"push: {prepared} → {repo_id} (dataset repo): 5 files" in pushed.stdout
    assert f"push: {repo_id} ← {hub.url}/datasets/{repo_id}/commit/" in pushed.stdout
    assert hashes(prepared) == before  # the source is read, never written

    back = load_back(hub, repo_id, tmp_path / "reader")
    splits = load_prepared(prepared).splits()
    assert list(back["splits"]) == ["train", "validation", "test"]
    for name, pairs in splits.items():
        assert back["splits"][name] == [row_of(p) for p in pairs], name  # the same rows, in the same order
        assert [pair_of(r) for r in back["splits"][name]] == [replace(p, source=public_source(p.source)) for p in pairs]
    assert {len(v) for v in back["splits"].values()} == {61, 8}

    card = back["card"]
    assert card["configs"] == [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*"} for s in ("train", "validation", "test")]}]
    assert {s["name"]: s["num_examples"] for s in card["dataset_info"]["splits"]} == {"train": 61, "validation": 8,
                                                                                      "test": 8}
    assert [f["name"] for f in card["dataset_info"]["features"]] == list(back["splits"]["train"][0])
    assert card["license"] == "other" and card["license_link"] == "LICENSE"
    assert card["source_datasets"] == ["extended|openai/summarize_from_feedback"]

    again = data_push(hub, prepared, "--repo-id", repo_id, home=tmp_path)  # unchanged: no new commit
    assert again.returncode == 0 and hub.commits(repo_id, "dataset") == 2
    assert TOKEN not in pushed.stdout + pushed.stderr + again.stdout + again.stderr
    assert not [b for b in hub.store.blobs.values() if TOKEN.encode() in b]


def test_the_dataset_card_says_source_license_counts_skips_split_and_seed(hub, prepared, tmp_path):
    from huggingface_hub import DatasetCard

    result = data_push(hub, prepared, "--repo-id", f"{USER}/card", "--dry-run", "--stage-dir", tmp_path, home=tmp_path)
    assert result.returncode == 0, result.stderr
    staged = tmp_path / "datasets" / "card"
    text = DatasetCard.load(staged / "README.md").text
    stats = json.loads((prepared / "stats.json").read_text())
    for line in ("from `tldr-sample` (from [openai/summarize_from_feedback]",
                 "| train | 61 | ", "| validation | 8 | 8 |", "| test | 8 | 8 |",
                 f"| rows read | {stats['rows']['total']:,} |", f"| pairs kept after cleaning | {stats['rows']['kept']:,} |",
                 *(f"| skipped: {reason} | {n:,} |" for reason, n in stats["rows"]["skipped"].items()),
                 "**Split rule**: By post: all pairs of a post are in one split", "drawn with seed 7",
                 "a fraction 0.05 of the", "Modified MIT License", "Copyright (c) 2020 OpenAI",
                 "Webis-TLDR-17", 'ds = load_dataset("tester/card")'):
        assert line in text, line
    assert (staged / "LICENSE").read_text().startswith("Modified MIT License")
    assert str(prepared.parent) not in (staged / "README.md").read_text()  # no local folders in a public card


def test_the_demo_votes_round_trip_with_their_skips(hub, votes, tmp_path):
    repo_id = f"{USER}/demo-votes"
    pushed = data_push(hub, votes, "--repo-id", repo_id, "--private", home=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert f"→ {repo_id} (dataset repo) (private)" in pushed.stdout
    assert hub.store.repos[("dataset", repo_id)].private

    back = load_back(hub, repo_id, tmp_path / "reader")
    rows = back["splits"]["train"]
    assert list(back["splits"]) == ["train"] and len(rows) == 4  # 6 votes: one repeated, one of identical summaries
    assert [r["chosen"] for r in rows] == [" New cat, old dog, trouble.", " Rent up 40%.", " Got the job.",
                                           " Brother crashed my car."]
    assert all(r["source"].startswith("preferences.jsonl:") for r in rows)
    meta = json.loads(rows[0]["meta"])
    assert meta["chosen_policy"] == "base" and meta["rejected_policy"] == "tuned" and meta["split"] == "demo"
    assert back["card"]["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert back["card"]["license"] == "unknown"

    from huggingface_hub import DatasetCard, snapshot_download

    local = Path(snapshot_download(repo_id, repo_type="dataset", endpoint=hub.url, token=TOKEN,
                                   cache_dir=tmp_path / "cache"))
    assert (local / "raw" / "preferences.jsonl").read_bytes() == (votes / "preferences.jsonl").read_bytes()
    text = DatasetCard.load(local / "README.md").text
    for line in ("| skipped: identical pair | 1 |", "| skipped: duplicate label | 1 |", "| rows read | 6 |",
                 "| pairs kept after cleaning | 4 |", "Not split: every vote is in `train`",
                 "| `tuned` | preferred 2 of 4 times |", "| `base` | preferred 2 of 4 times |", "Votes collected in"):
        assert line in text, line


def test_a_dry_run_stages_exactly_what_is_uploaded_and_writes_nowhere_else(hub, votes, tmp_path):
    from huggingface_hub import snapshot_download

    around = hashes(votes.parent)
    result = data_push(hub, votes / "preferences.jsonl", "--repo-id", f"{USER}/staged", "--dry-run", home=tmp_path,
                       token=None, endpoint=f"http://127.0.0.1:{closed_port()}")  # offline, no token
    assert result.returncode == 0, result.stderr
    staged = votes.parent / "hub_upload" / "datasets" / "staged"  # beside the run folder holding the file
    assert "dry run: nothing uploaded" in result.stdout and (staged / "README.md").is_file()
    assert {k: v for k, v in hashes(votes.parent).items() if not k.startswith("hub_upload")} == around
    refused = data_push(hub, votes / "preferences.jsonl", "--repo-id", f"{USER}/staged", "--dry-run", "--stage-dir",
                        votes / "stage", home=tmp_path)
    assert refused.returncode == 2 and "is inside the folder holding the votes" in refused.stderr and not (votes / "stage").exists()
    assert (USER, "staged") not in {tuple(r.repo_id.split("/")) for r in hub.store.repos.values()}

    pushed = data_push(hub, votes / "preferences.jsonl", "--repo-id", f"{USER}/staged", home=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    local = Path(snapshot_download(f"{USER}/staged", repo_type="dataset", endpoint=hub.url, token=TOKEN,
                                   cache_dir=tmp_path / "cache"))
    assert hashes(local) == hashes(staged)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- bad input: one line, exit 2 -----------------------------------------------------------------


def copy_of(prepared: Path, tmp: Path) -> Path:
    folder = tmp / "copy"
    folder.mkdir()
    for f in prepared.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def damaged(name: str, text: str, append: bool = False):
    """A copy of the prepared folder with `name` overwritten by (or extended with a line of) `text`."""
    def setup(prepared: Path, tmp: Path) -> Path:
        folder = copy_of(prepared, tmp)
        with open(folder / name, "a" if append else "w") as fh:
            fh.write(text + ("\n" if append else ""))
        return folder
    return setup


def without(name: str):
    def setup(prepared: Path, tmp: Path) -> Path:
        folder = copy_of(prepared, tmp)
        (folder / name).unlink()
        return folder
    return setup


def votes_file(*rows):
    def setup(prepared: Path, tmp: Path) -> Path:
        path = tmp / "preferences.jsonl"
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path
    return setup


def folder_with(*names: str):
    def setup(prepared: Path, tmp: Path) -> Path:
        folder = tmp / "folder"
        folder.mkdir()
        for name in names:
            (folder / name).write_text("{}")
        return folder
    return setup


INPUTS = [
    ("missing folder", lambda p, t: t / "nowhere", "nowhere: no such file or folder: pass a folder written by "
                                                  "`preftune data prepare`"),
    ("empty folder", folder_with(), "is neither a prepared folder nor a folder holding preferences.jsonl: pass"),
    ("a run folder without votes", folder_with("preftune_config.json"),
     "(it is a run folder without the demo's votes; `preftune push` pushes its model)"),
    ("a stats.json that is not preftune's", folder_with("stats.json"),
     "(its stats.json was not written by `preftune data prepare`)"),
    ("split files without stats.json", folder_with("train.jsonl"),
     "(it has train.jsonl but no stats.json: prepare the data again)"),
    ("damaged stats.json", damaged("stats.json", "{not json"), "stats.json: cannot read the prepared folder's statistics"),
    ("damaged train line", damaged("train.jsonl", "{torn", append=True), "train.jsonl:62: malformed JSON line"),
    ("a train row without chosen", damaged("train.jsonl", '{"prompt": "p", "rejected": "r", "post_id": "x"}', True),
     "train.jsonl:62: field 'chosen'"),
    ("empty train split", damaged("train.jsonl", ""), "train.jsonl: no training pairs: prepare the data again"),
    ("missing validation split", without("eval.jsonl"), "incomplete prepared folder: no eval.jsonl (validation split)"),
    ("empty votes file", votes_file(), "preferences.jsonl: file is empty: no rows"),
    ("damaged votes line", votes_file(comparison(), "{torn"), "preferences.jsonl:2:"),
    ("votes in another format", votes_file({"prompt": "p", "chosen": "a", "rejected": "b"}),
     "preferences.jsonl:1: field 'info': missing"),
    ("only identical votes", votes_file(comparison(chosen=" same", rejected=" same")),
     "no votes left to push (kept 0 / 1; skipped 1: identical pair (1))"),
]


@pytest.mark.parametrize("case, setup, message", INPUTS, ids=[c[0] for c in INPUTS])
def test_bad_input_is_one_line(prepared, tmp_path, capsys, case, setup, message):
    target = setup(prepared, tmp_path)
    assert main(["data", "push", str(target), "--repo-id", "me/data", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("preftune: error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "hub_upload").exists() and not (target.parent / "hub_upload").exists()


@pytest.mark.parametrize("args, message", [
    ([], "--repo-id is required: the dataset repo to push to, OWNER/NAME"),
    (["--repo-id", "just-a-name"], "--repo-id must look like OWNER/NAME (letters, digits, '-', '_', '.'), got "
                                   "'just-a-name'"),
    (["--repo-id", "me/bad name!"], "--repo-id must look like OWNER/NAME"),
    (["--repo-id", "me/a--b"], "invalid repo name 'me/a--b': Cannot have -- or .. in repo_id"),
    (["--repo-id", "me/data", "--stage-dir", "{prepared}/stage"], "is inside the prepared folder"),
    (["--repo-id", "me/data", "--stage-dir", "{prepared}"], "is the prepared folder"),
])
def test_bad_flags_are_one_line(prepared, capsys, args, message):
    before = hashes(prepared)
    args = [a.format(prepared=prepared) for a in args]
    assert main(["data", "push", str(prepared), "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("preftune: error:") == 1
    assert hashes(prepared) == before


@pytest.mark.parametrize("case, repo_id, token, message", [
    ("no token", f"{USER}/x", None, "no Hugging Face token found: create a token with write access"),
    ("401", f"{USER}/x", "hf_NotAValidToken", "rejected the token (401 Unauthorized: invalid, expired or revoked)"),
    ("403 namespace", "someone/new-data", TOKEN, "not allowed to write to someone/new-data (403"),
    ("403 repo", "someone/their-data", TOKEN, "not allowed to write to someone/their-data (403"),
    ("unreachable", f"{USER}/x", TOKEN, "cannot reach the Hub at http://127.0.0.1:"),
])
def test_hub_errors_say_what_to_do(hub, prepared, tmp_path, case, repo_id, token, message):
    endpoint = f"http://127.0.0.1:{closed_port()}" if case == "unreachable" else None
    result = data_push(hub, prepared, "--repo-id", repo_id, home=tmp_path, token=token, endpoint=endpoint)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("preftune: error:") == 1 and TOKEN not in result.stdout + result.stderr
    assert ("dataset", "someone/new-data") not in hub.store.repos


def test_an_older_prepared_folder_without_test_split_and_odd_stats_still_pushes(prepared, tmp_path, capsys):
    """A folder from before the test split (no test.jsonl) and a stats.json whose counts are not what
    preftune writes: the empty split is left out (and said), the odd values are n/a, nothing crashes."""
    from huggingface_hub import DatasetCard

    folder = copy_of(prepared, tmp_path)
    (folder / "test.jsonl").unlink()
    stats = json.loads((folder / "stats.json").read_text())
    (folder / "stats.json").write_text(json.dumps({**stats, "rows": ["not", "counts"], "config": {"seed": "x"}}))
    assert main(["data", "push", str(folder), "--repo-id", "me/old", "--dry-run"]) == 0, capsys.readouterr().err
    assert "the test split of" in capsys.readouterr().out
    staged = tmp_path / "hub_upload" / "datasets" / "old"
    card = DatasetCard.load(staged / "README.md")
    assert sorted(p.name for p in (staged / "data").iterdir()) == ["train-00000-of-00001.parquet",
                                                                  "validation-00000-of-00001.parquet"]
    assert [f["split"] for f in card.data.to_dict()["configs"][0]["data_files"]] == ["train", "validation"]
    for line in ("| test | 0 (not in the repo) |", "| rows read | n/a |", "drawn with seed x;"):
        assert line in card.text, line


def test_pushed_rows_read_back_as_the_same_pairs(prepared, tmp_path):
    """A pushed split read back with --dataset (here its Parquet file) is detected as preftune_pairs and gives
    the pairs as prepared: the trimmable span and cut rule too, so a TL;DR post is still cut at its end."""
    from preftune.data.folder import load_prepared
    from preftune.data.prepare import Reading, iter_pairs
    from preftune.hub.data import write_parquet

    pairs = load_prepared(prepared).splits()["validation"]
    write_parquet(pairs, tmp_path / "validation.parquet")
    reading = Reading()
    back = list(iter_pairs(DataConfig(dataset=str(tmp_path / "validation.parquet")), reading))
    assert reading.format == "preftune_pairs"
    keep = ("prompt", "chosen", "rejected", "post_id", "body_span", "cut", "turns", "meta")
    assert [[getattr(p, k) for k in keep] for p in back] == [[getattr(p, k) for k in keep] for p in pairs]
    assert all(p.cut == "end" and p.body_span[0] > 0 for p in back)  # the SUBREDDIT/TITLE header is not trimmable
