"""`preftune sft` on a tiny model, with each engine: the loss falls, the folder loads and records its rows'
posts (never a validation or test post), a DPO run trained from it records the chain base → SFT → DPO (and
reports/cards show it), CarperAI TL;DR SFT rows load in preftune's prompt format, and bad rows stop with
file, row and field."""

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared, write_jsonl

from preftune.config import DataConfig, SFTConfig, TrainConfig
from preftune.data.prepare import prepare
from preftune.errors import PreftuneError
from preftune.models import load_model, load_tokenizer
from preftune.runs.dpo import train
from preftune.runs.folder import CONFIG_FILE, chain_text, run_dirs
from preftune.runs.results import open_run
from preftune.runs.sft import file_rows, sft

DATA = DataConfig(fraction=0.03, seed=3)
MINI = SHARED_DATA / "openai_summarize_tldr_carperai_mini"


def sft_cfg(model: Path, out: Path, **kw) -> SFTConfig:
    base = dict(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, epochs=2, max_length=192, max_rows=8)
    return SFTConfig(**{**base, **kw})


@pytest.fixture(scope="module", params=["fast", "trl"])
def sft_run(request, tiny_model, tmp_path_factory):
    return sft(DATA, sft_cfg(tiny_model, tmp_path_factory.mktemp("runs"), engine=request.param))


def test_loss_falls_and_folder_loads(sft_run):
    """Four steps at a high lr on 8 rows (2 epochs): the last logged loss is below the first; the folder
    is a from_pretrained model + tokenizer with kind 'sft' in its config and no .partial left."""
    log = [json.loads(line) for line in (sft_run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and log[-1]["loss"] < log[0]["loss"]
    load_model(str(sft_run)), load_tokenizer(str(sft_run))
    config = json.loads((sft_run / CONFIG_FILE).read_text())
    assert config["kind"] == "sft" and config["sft"]["max_rows"] == 8 and config["fit"]["kept"] == 8
    assert config["world_size"] == 1 and config["per_device_batch_size"] == 4
    assert json.loads((sft_run / "metrics.json").read_text())["train_rows"] == 8
    assert not list(sft_run.parent.glob("*.partial"))
    assert run_dirs(sft_run.parent)[0] == []  # not a DPO run: `report` does not rank it


def test_sft_posts_are_train_posts_only(sft_run):
    """Every post the SFT run imitated is a train post of the same preparation, none validation or test."""
    prepared = prepare(DATA)
    held_out = {p.post_id for p in prepared.validation + prepared.test}
    posts = set(json.loads((sft_run / CONFIG_FILE).read_text())["post_ids"])
    assert posts and held_out and not posts & held_out
    assert posts <= {p.post_id for p in prepared.train}


def test_dpo_from_sft_records_the_chain(sft_run, tmp_path):
    """`train --model SFT_RUN` trains with the SFT weights as policy and reference and records
    base → SFT → DPO; the card line and report read it; an old run without a chain reports [base, dpo]."""
    cfg = TrainConfig(output_dir=str(tmp_path), model=str(sft_run), lr=1e-2, batch_size=2, epochs=1, max_length=192,
                      max_pairs=2, max_eval_pairs=2, gradient_checkpointing=False)
    run = train(DATA, cfg)
    config = json.loads((run / CONFIG_FILE).read_text())
    chain = config["chain"]
    assert [e["kind"] for e in chain] == ["base", "sft", "dpo"]
    assert chain[1]["run"] == sft_run.name and chain[1]["path"] == str(sft_run.resolve())
    assert chain[2]["run"] == run.name and config["reference_model"] == str(sft_run)
    assert chain_text(open_run(run).chain) == "base → SFT → DPO"
    assert "SFT (lr 0.01, bs 4, 2 epochs, 8 rows of chosen)" in chain_text(chain, settings=True)

    from preftune.sweep.leaderboard import run_row
    assert run_row(open_run(run))["chain"] == "base → SFT → DPO"
    del config["chain"]
    (run / CONFIG_FILE).write_text(json.dumps(config))
    assert chain_text(open_run(run).chain) == "base → DPO"


def test_bad_rows_name_file_row_and_field(tmp_path):
    """A missing label, a prompt without the TL;DR cue: one error naming file:row and field; an empty
    label is a counted skip."""
    good = {"prompt": "SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR: ", "label": "s"}
    path = write_jsonl(tmp_path / "sft.jsonl", [good, {"prompt": good["prompt"]}])
    with pytest.raises(PreftuneError, match=r"sft.jsonl:2: field 'label': missing"):
        file_rows(str(path), "train")
    write_jsonl(path, [good, {"prompt": "no cue here", "label": "s"}])
    with pytest.raises(PreftuneError, match=r"sft.jsonl:2: field 'prompt': must end with 'TL;DR:'"):
        file_rows(str(path), "train")
    write_jsonl(path, [good, {**good, "label": "  "}])
    rows, tally = file_rows(str(path), "train")
    assert len(rows) == 1 and tally.skipped == {"empty summary": 1}


@needs_shared(MINI)
def test_carperai_mini_rows_map_to_preftune_prompts():
    """The 50 CarperAI train rows load: prompts end '\\nTL;DR:' like preftune's, summaries start with a
    space, the post is the trimmable span."""
    rows, tally = file_rows(str(MINI / "train.jsonl"), "train")
    assert len(rows) == 50 and tally.kept == 50
    first = rows[0]
    assert first.prompt.endswith("\nTL;DR:") and first.chosen.startswith(" I still have contact")
    start, end = first.body_span
    assert first.prompt[:start].endswith("\nPOST: ") and first.prompt[end:] == "\nTL;DR:"


@needs_shared(MINI)
def test_sft_on_carperai_file(tiny_model, tmp_path):
    """--sft-data FILE trains from the file's rows and records the source."""
    run = sft(DATA, sft_cfg(tiny_model, tmp_path, sft_data=str(MINI / "valid.jsonl"), max_rows=4, epochs=1))
    config = json.loads((run / CONFIG_FILE).read_text())
    assert config["sft_source"]["source"].endswith("valid.jsonl") and config["chain"][-1]["rows"] == 4


def tldr_rows(split: str, n: int) -> list[dict]:
    return [{"prompt": f"SUBREDDIT: r/x\nPOST: {split} post {i}.\nTL;DR: ", "label": f"{split} {i}"} for i in range(n)]


def split_folder(root: Path) -> Path:
    """train 5, valid 3, test 2 rows, each file named for its split (CarperAI's names; a hub-style shard)."""
    root.mkdir()
    write_jsonl(root / "train.jsonl", tldr_rows("train", 5))
    write_jsonl(root / "valid.jsonl", tldr_rows("valid", 3))
    (root / "data").mkdir()
    write_jsonl(root / "data" / "test-00000-of-00001.jsonl", tldr_rows("test", 2))
    return root


@pytest.mark.parametrize("split, want", [("train", ["train"] * 5), ("valid", ["valid"] * 3),
                                         ("validation", ["valid"] * 3), ("test", ["test"] * 2)])
def test_a_folder_of_split_files_is_read_split_by_split(tmp_path, split, want):
    """--sft-data FOLDER --sft-split train read every file: validation and test rows were imitated."""
    rows, tally = file_rows(str(split_folder(tmp_path / "tldr")), split)
    assert [r.chosen.split()[0] for r in rows] == want and tally.total == len(want)


@pytest.mark.parametrize("make, split, message", [
    (split_folder, "dev2", "--sft-split dev2: {root} has no dev2 split file; its splits: test, train, validation"),
    (lambda root: (split_folder(root), write_jsonl(root / "extra.jsonl", tldr_rows("x", 1)))[0], "train",
     "{root}/extra.jsonl: a file not named for a split (train*, valid*, test*) among split files in {root}"),
    (lambda root: (root.mkdir(), write_jsonl(root / "rows.jsonl", tldr_rows("x", 2)))[1].parent, "test",
     "--sft-split test: no file in {root} is named for a split (train*, valid*, test*); its files are one split, "
     "train: drop --sft-split"),
    (lambda root: (root.mkdir(), write_jsonl(root / "rows.jsonl", tldr_rows("x", 2)))[1], "valid",
     "--sft-split valid: {root}/rows.jsonl is one file, with no splits to pick from"),
])
def test_a_split_that_cannot_be_picked_is_refused(tmp_path, make, split, message):
    root = tmp_path / "tldr"
    spec = make(root)
    with pytest.raises(PreftuneError) as error:
        file_rows(str(spec), split)
    assert message.format(root=root) in str(error.value)


def test_sft_split_with_chosen_is_refused(tmp_path):
    with pytest.raises(PreftuneError, match="--sft-split test applies to --sft-data FILE/FOLDER/hub id, not to "
                                            "--sft-data chosen"):
        sft(DATA, sft_cfg("unused", tmp_path, sft_split="test"))
    assert not list(tmp_path.iterdir())


def test_training_pair_options_choose_the_imitated_summaries(tiny_tokenizer):
    """sft ignored --min-confidence / --length-balance but recorded them: now the chosen summaries come
    from the train pairs `train` would keep, and the run records what was removed."""
    from preftune.data.options import confidence_strength, select_train_pairs
    from preftune.runs.sft import chosen_rows, load_rows

    data = DataConfig(fraction=0.03, seed=3, min_confidence=3, length_balance=True)
    rows, info = load_rows(data, SFTConfig(), tiny_tokenizer)
    train = prepare(data, tokenizer=tiny_tokenizer).train
    kept, _ = select_train_pairs(train, data, tiny_tokenizer)
    assert 0 < len(kept) < len(train)
    assert [(r.prompt, r.chosen) for r in rows] == [(r.prompt, r.chosen) for r in chosen_rows(kept)]
    strength = {(p.prompt, p.chosen): confidence_strength(p) for p in kept}
    assert all(strength[(r.prompt, r.chosen)] >= 3 for r in rows)
    options = info["train_options"]
    assert options["min_confidence"]["threshold"] == 3 and "length_balance" in options
    assert info["train_pairs"] == len(kept)


@pytest.mark.parametrize("flags, named", [({"min_confidence": 2}, "--min-confidence"),
                                          ({"length_balance": True}, "--length-balance")])
def test_training_pair_options_with_sft_rows_are_refused(tmp_path, flags, named):
    rows = write_jsonl(tmp_path / "rows.jsonl", tldr_rows("train", 2))
    with pytest.raises(PreftuneError, match=f"^{named} choose among preference pairs; --sft-data {rows} holds SFT rows"):
        sft(DataConfig(**flags), sft_cfg("unused", tmp_path / "runs", sft_data=str(rows)))
    assert not (tmp_path / "runs").exists()
