"""`preftune space`: the Space folder's card is a valid Spaces YAML header, its requirements parse,
and its app.py builds the demo from the copied package without loading a model or launching."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_serve import tiny_run  # noqa: E402  (tests/ is on sys.path under pytest)

from preftune.cli import main

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    return tiny_run(tiny_model, tmp_path_factory)


@pytest.fixture(scope="module")
def space_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "demo"
    assert main(["space", str(run_dir), "--out", str(out), "--repo-id", "alice/tldr-demo", "--base", BASE,
                 "--examples", "3"]) == 0
    return out


def header(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_is_a_valid_spaces_header(space_dir, run_dir):
    from huggingface_hub import SpaceCard

    meta = header(space_dir / "README.md")
    assert meta["sdk"] == "gradio" and (space_dir / meta["app_file"]).is_file()
    assert meta["models"] == [f"alice/{run_dir.name}", BASE]  # the model under `preftune push`'s default name
    assert meta["datasets"] == ["openai/summarize_from_feedback"]
    assert {"dpo", "preftune"} <= set(meta["tags"]) and meta["license"] == "apache-2.0"
    assert 0 < len(meta["short_description"]) <= 60  # the Hub rejects longer ones
    assert meta["sdk_version"] == importlib.metadata.version("gradio")
    card = SpaceCard.load(space_dir / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert 'Client("alice/tldr-demo")' in card.text


def test_requirements_parse_and_leave_gradio_to_the_sdk(space_dir):
    from packaging.requirements import Requirement

    reqs = [Requirement(line) for line in (space_dir / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    names = {r.name for r in reqs}
    assert {"torch", "transformers", "huggingface_hub", "safetensors"} <= names and "gradio" not in names
    import transformers

    assert next(r for r in reqs if r.name == "transformers").specifier.contains(transformers.__version__)


def test_demo_json_points_at_hub_repos(space_dir, run_dir):
    spec = json.loads((space_dir / "demo.json").read_text())
    config = json.loads((run_dir / "preftune_config.json").read_text())
    assert (spec["policy"], spec["base"]) == (f"alice/{run_dir.name}", BASE)
    assert spec["beta"] == config["train"]["beta"] and len(spec["examples"]) == 3


def test_app_imports_from_the_copied_package_without_loading_or_launching(space_dir):
    probe = ("import json, app, preftune, gradio as gr\n"
             "print(json.dumps({'package': preftune.__file__, 'blocks': isinstance(app.demo, gr.Blocks),\n"
             "  'loaded': app.DEMO._loaded is not None, 'running': app.demo.is_running,\n"
             "  'apis': [d.get('api_name') for d in app.demo.config['dependencies']]}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run([sys.executable, "-c", probe], cwd=space_dir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["package"]).resolve().is_relative_to(space_dir.resolve())  # the copy, not this checkout
    assert got["blocks"] and not got["loaded"] and not got["running"]
    assert {"summarize", "prefer_base", "prefer_tuned"} <= set(got["apis"])


def test_space_needs_hub_ids(run_dir, tmp_path, capsys):
    # the tiny run's base model is a local folder: a Space cannot load it
    assert main(["space", str(run_dir), "--out", str(tmp_path / "a"), "--repo-id", "alice/x"]) == 2
    assert "is not a hub id (a local folder?), which a Space cannot load: pass --base" in capsys.readouterr().err
    assert main(["space", str(run_dir), "--out", str(tmp_path / "b"), "--base", BASE]) == 2
    assert "pass --repo-id OWNER/NAME" in capsys.readouterr().err
    assert main(["space", str(run_dir), "--out", str(tmp_path / "c"), "--repo-id", "not-a-repo-id"]) == 2
    assert "--repo-id must look like OWNER/NAME" in capsys.readouterr().err


def _read_only(tmp: Path) -> Path:
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: "", "--out is empty"),
    (lambda tmp: "   ", "--out is empty"),
    (lambda tmp: (tmp / "a.txt", (tmp / "a.txt").write_text("x"))[0], "is a file, not a folder"),
    (lambda tmp: "/dev/null", "/dev/null is a file, not a folder"),
    (lambda tmp: (tmp / "a.txt", (tmp / "a.txt").write_text("x"))[0] / "space", "a.txt is a file, so no folder"),
    pytest.param(_read_only, "is not writable", marks=pytest.mark.skipif(
        os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")),
    pytest.param(lambda tmp: _read_only(tmp) / "space", "is not writable", marks=pytest.mark.skipif(
        os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")),
    pytest.param(lambda tmp: "/sys/preftune-space", "/sys is not writable", marks=pytest.mark.skipif(
        not Path("/sys/kernel").is_dir(), reason="Linux sysfs (read-only even for root)")),
])
def test_space_refuses_an_unusable_out_before_any_work(tmp_path, capsys, monkeypatch, make, message):
    """--out that is empty, a file, /dev/null, under a file or not writable: one line, exit 2, nothing read
    (not even the run folder, which does not exist here) and nothing written."""
    import preftune.serve.space as space

    monkeypatch.setattr(space, "open_run", lambda *a: pytest.fail("read the run before checking --out"))
    out = make(tmp_path)
    made = sorted(tmp_path.rglob("*"))
    assert main(["space", str(tmp_path / "no-run"), "--out", str(out), "--repo-id", "alice/x", "--base", BASE]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == made


def test_space_never_writes_into_a_foreign_folder(run_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["space", str(run_dir), "--out", str(tmp_path), "--repo-id", "alice/x", "--base", BASE]) == 2
    assert "is not a Space folder written by `preftune space`" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---- --push, against the project's local Hub-compatible server (tests/hub_server.py) --------------

TOKEN = "hf_SpaceTestSecret0b7d1e2f3a"
UPLOAD_MODELS = """
import sys
from huggingface_hub import HfApi
api = HfApi()
for folder, repo in zip(sys.argv[1::2], sys.argv[2::2]):
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo, ignore_patterns=["*.bin"])
"""
RUN_PULLED_SPACE = """
import json, sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], repo_type="space", local_dir=".")
import app
from preftune.serve.demo import prompt
from preftune.judge.generate import Decoding
s = Decoding(temperature=0, max_new_tokens=12)
ids = app.DEMO.check("test", "Bread", "I went to the shop and bought bread, then lost it on the bus.", s)
texts = list(app.DEMO.stream(ids, s))[-1]
rewards = [x.reward for x in app.DEMO.score(prompt("test", "Bread", "I went to the shop."), texts)]
print(json.dumps({"sources": app.DEMO.load().sources, "texts": texts, "rewards": rewards}))
"""


def test_push_creates_the_space_and_it_runs_from_the_hub(run_dir, tiny_model, tmp_path):
    """Models on the (local) Hub, `preftune space --push` creates and fills the Space; the Space, downloaded
    back, imports its app, loads both models from their Hub repos and summarizes."""
    from hub_server import HubServer

    with HubServer({TOKEN: "tester"}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN,
               "HF_HOME": str(tmp_path / "home"), "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        env.pop("HF_HUB_OFFLINE", None)
        model_repo, base_repo = f"tester/{run_dir.name}", "tester/tiny-base"

        def python(*args, cwd=None):
            done = subprocess.run([sys.executable, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                                  text=True, timeout=180)
            assert done.returncode == 0, done.stderr[-3000:]
            assert TOKEN not in done.stdout + done.stderr
            return done.stdout

        python("-c", UPLOAD_MODELS, run_dir, model_repo, tiny_model, base_repo)
        out = python("-m", "preftune", "space", run_dir, "--out", tmp_path / "space", "--base", base_repo, "--push")
        space_id = f"tester/{run_dir.name}-demo"  # no --repo-id: the token owner's name (whoami)
        assert f"pushed to {hub.url}/spaces/{space_id}" in out
        space = hub.store.repos[("space", space_id)]
        files = space.at("main").files
        assert {"README.md", "app.py", "requirements.txt", "demo.json", "preftune/serve/app.py"} <= set(files)
        assert not any(TOKEN in p.read_text(errors="ignore") for p in (tmp_path / "space").rglob("*") if p.is_file())

        pulled = tmp_path / "pulled"
        pulled.mkdir()
        got = json.loads(python("-c", RUN_PULLED_SPACE, space_id, cwd=pulled).strip().splitlines()[-1])
    assert got["sources"] == [f"hub ({model_repo})", f"hub ({base_repo})"]
    assert all(got["texts"]) and got["rewards"][0] != 0  # two different models: the tuned one moved
