"""`preftune push` with the real huggingface_hub client against the project's own Hub-compatible server
(tests/hub_server.py) on 127.0.0.1: push a tiny run, download it back, same logits; the card's metadata
parses with ModelCard.load and carries hyperparameters and metrics; re-push makes no commit; dry run;
--best; the token from the login cache; the no-token / 401 / 403 / invalid-name / unreachable errors;
and the token appears in nothing the tool prints or writes.

The pushes run in subprocesses: huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET at import."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import HubServer

from preftune.config import DataConfig, ReportConfig, TrainConfig
from preftune.runs.dpo import train
from preftune.sweep.report import report

TOKEN = "hf_PreftuneTestSecret7c1e04b9d2"
USER = "tester"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def hub():
    with HubServer({TOKEN: USER, "hf_OtherUserToken": "someone"}) as server:
        server.add_repo("someone/their-model")
        yield server


class Collect(logging.Handler):
    """Keeps every message preftune logs (the module fixture cannot use capsys)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A finished run, trained and reported while HF_TOKEN holds the token (nothing may record it)."""
    root = tmp_path_factory.mktemp("push") / "runs"
    collect = Collect()
    logging.getLogger("preftune").addHandler(collect)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_TOKEN", TOKEN)
            cfg = TrainConfig(output_dir=str(root), model=str(tiny_model), lr=1e-2, batch_size=4, max_pairs=8,
                              max_eval_pairs=4, max_length=192, gradient_checkpointing=False, engine="trl")
            run = train(DataConfig(fraction=0.03, seed=3), cfg)
            # also scores the chosen run on its test pairs (test.json); by accuracy: a handful of validation
            # pairs may lack one length stratum, and with it the length-balanced accuracy
            report(root, ReportConfig(rank_by="accuracy"))
    finally:
        logging.getLogger("preftune").removeHandler(collect)
    return run, collect.lines


def push(hub, *args, token=TOKEN, home: Path, endpoint=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint or hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "preftune", "push", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()(ids).logits


def test_push_round_trip(hub, trained, tmp_path):
    from huggingface_hub import ModelCard, snapshot_download

    run, _ = trained
    repo_id = f"{USER}/{run.name}"
    dry = push(hub, run, "--base-model", BASE, "--dry-run", "--stage-dir", tmp_path / "stage", home=tmp_path)
    assert dry.returncode == 0, dry.stderr
    staged = tmp_path / "stage" / run.name
    assert f"→ {repo_id}" in dry.stdout and "dry run: nothing uploaded" in dry.stdout
    assert repo_id not in {r.repo_id for r in hub.store.repos.values()}

    pushed = push(hub, run, "--base-model", BASE, home=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert f"push: {repo_id} ← {hub.url}/{repo_id}/commit/" in pushed.stdout

    local = Path(snapshot_download(repo_id, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache"))
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert files == {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}  # the dry run was exact
    assert {"README.md", "training_curves.png", "model.safetensors", "config.json", "eval.json"} <= files
    assert "training_args.bin" not in files and not any(f.startswith("checkpoints") for f in files)
    assert (local / "README.md").read_bytes() == (staged / "README.md").read_bytes()
    assert (local / "training_curves.png").read_bytes().startswith(b"\x89PNG")

    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    assert torch.equal(logits(local, ids), logits(run, ids))

    again = push(hub, run, "--base-model", BASE, home=tmp_path)  # idempotent: no new commit
    assert again.returncode == 0 and hub.commits(repo_id) == 2  # the initial commit + one upload

    card = ModelCard.load(local / "README.md")
    data = card.data.to_dict()
    evaluation, test = (json.loads((run / name).read_text()) for name in ("eval.json", "test.json"))
    assert data["base_model"] == BASE and data["license"] == "apache-2.0"
    assert data["datasets"] == ["openai/summarize_from_feedback"] and "dpo" in data["tags"]
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results["validation", "accuracy"] == evaluation["accuracy"]
    assert results["validation", "mean_reward_margin"] == evaluation["mean_margin"]
    assert results["test", "accuracy"] == test["accuracy"]
    if evaluation["length_balanced_accuracy"] is not None:
        assert results["validation", "length_balanced_accuracy"] == evaluation["length_balanced_accuracy"]
    assert data["model-index"][0]["name"] == run.name
    text = card.text
    lo, hi = evaluation["accuracy_ci95"]
    for row in ("| lr | 0.01 |", "| batch size | 4 |", "| epochs | 1 |", "| beta | 0.1 |", "| loss | sigmoid |",
                "| fraction of the cleaned pairs used | 0.03 |", "| validation fraction of posts | 0.1 |",
                "| test fraction of posts | 0.1 |", "### validation split of `tldr-sample`", "### test split of `tldr-sample`",
                f"| preference accuracy (implicit reward) | {evaluation['accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f}, "
                f"Wilson, n={evaluation['n']}) |",
                "chosen on validation accuracy from 1 run compared (rank 1); never used for choosing",
                "![training curves](training_curves.png)", f'model_id = "{repo_id}"'):
        assert row in text, row


def test_card_of_a_local_base_model_names_no_base_model(hub, trained, tmp_path):
    from huggingface_hub import ModelCard

    run, _ = trained
    result = push(hub, run, "--dry-run", "--stage-dir", tmp_path, home=tmp_path)
    assert result.returncode == 0, result.stderr
    data = ModelCard.load(tmp_path / run.name / "README.md").data.to_dict()
    assert "base_model" not in data and data["license"] == "other"  # a local folder is no hub id


def test_dry_run_works_offline_without_a_token(hub, trained, tmp_path):
    run, _ = trained
    result = push(hub, run, "--dry-run", "--stage-dir", tmp_path, token=None, home=tmp_path,
                  endpoint=f"http://127.0.0.1:{closed_port()}")
    assert result.returncode == 0, result.stderr
    assert f"<your-username>/{run.name}" in result.stdout and "README.md" in result.stdout
    assert (tmp_path / run.name / "README.md").is_file() and (tmp_path / run.name / "model.safetensors").is_file()


def test_best_n_pushes_the_top_runs(hub, trained, tmp_path):
    run, _ = trained
    root = tmp_path / "sweep"
    shutil.copytree(run, root / run.name)
    worse = root / "dpo_model_lr0.5_bs4_epoch1"
    shutil.copytree(run, worse)
    evaluation = json.loads((worse / "eval.json").read_text())
    (worse / "eval.json").write_text(json.dumps({**evaluation, "accuracy": evaluation["accuracy"] - 0.5}))
    result = push(hub, root, "--best", "1", "--rank-by", "accuracy", "--dry-run", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"→ {USER}/{run.name}" in result.stdout and worse.name not in result.stdout
    assert [p.name for p in (root / "hub_upload").iterdir()] == [run.name]


def test_token_from_the_login_cache(hub, trained, tmp_path):
    run, _ = trained
    (tmp_path / "token").write_text(TOKEN)  # where `hf auth login` keeps it (HF_HOME/token)
    result = push(hub, run, "--repo-id", f"{USER}/from-login-cache", "--private", token=None, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"→ {USER}/from-login-cache (private)" in result.stdout
    assert hub.commits(f"{USER}/from-login-cache") == 2 and hub.store.repos[("model", f"{USER}/from-login-cache")].private


@pytest.mark.parametrize("case, args, token, message", [
    ("no token", [], None, "no Hugging Face token found: create a token with write access at "
                           "https://huggingface.co/settings/tokens, then set HF_TOKEN or run `hf auth login`"),
    ("401", [], "hf_NotAValidToken", "rejected the token (401 Unauthorized: invalid, expired or revoked)"),
    ("403 namespace", ["--repo-id", "someone/new-model"], TOKEN, "not allowed to write to someone/new-model (403"),
    ("403 repo", ["--repo-id", "someone/their-model"], TOKEN, "not allowed to write to someone/their-model (403"),
    ("invalid name", ["--repo-id", "tester/bad name!"], TOKEN, "invalid repo name 'tester/bad name!'"),
    ("no owner", ["--repo-id", "just-a-name"], TOKEN, "invalid repo name 'just-a-name'"),
    ("unreachable", [], TOKEN, "cannot reach the Hub at http://127.0.0.1:"),
])
def test_push_errors_say_what_to_do(hub, trained, tmp_path, case, args, token, message):
    run, _ = trained
    endpoint = f"http://127.0.0.1:{closed_port()}" if case == "unreachable" else None
    result = push(hub, run, *args, token=token, home=tmp_path, endpoint=endpoint)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("preftune: error:") == 1
    assert TOKEN not in result.stdout + result.stderr
    if case == "unreachable":
        assert "--dry-run works offline" in result.stderr
    assert ("someone", "new-model") not in {tuple(r.repo_id.split("/")) for r in hub.store.repos.values()}


def test_the_token_is_in_nothing_printed_or_written(hub, trained, tmp_path):
    """Training, report, dry run, push and --best all run with the token in HF_TOKEN (the failing
    pushes are checked in test_push_errors_say_what_to_do); their output, every file under the run
    root (staging folder included) and HF_HOME, and every file that reached the Hub are searched."""
    run, printed = trained
    root = run.parent
    outputs = list(printed)
    for args in (["--dry-run"], ["--repo-id", f"{USER}/grep"], ["--best", "1", "--rank-by", "accuracy", "--namespace",
                                                                     USER]):
        result = push(hub, root if "--best" in args else run, *args, home=tmp_path / "home")
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    assert hub.commits(f"{USER}/grep") == 2 and (root / "hub_upload" / run.name / "README.md").is_file()

    secret = TOKEN.encode()
    assert not [o for o in outputs if TOKEN in o]
    written = [p for base in (root, tmp_path) for p in base.rglob("*") if p.is_file()]
    assert len(written) > 20 and not [p for p in written if secret in p.read_bytes()]
    assert hub.store.blobs and not [b for b in hub.store.blobs.values() if secret in b]
