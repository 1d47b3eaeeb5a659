"""`preftune space`: a Hugging Face Space folder that runs the same demo as `preftune serve`, with the
tuned model loaded from its Hub model repo, and (with --push) its upload.

The folder holds README.md (the Spaces YAML header, written by huggingface_hub's SpaceCardData),
app.py, requirements.txt, demo.json (models, β, limits, held-out example posts) and a copy of the
preftune package, so the Space runs exactly this version of the app without preftune on PyPI.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import preftune
from preftune.config import ServeConfig, SpaceConfig
from preftune.errors import PreftuneError
from preftune.hubids import check_repo_id, is_hub_id
from preftune.runs.results import Run, open_run
from preftune.serve.demo import DemoSpec, Limits, reward_text, spec_from_run

logger = logging.getLogger(__name__)

SHORT_DESCRIPTION = "Base vs DPO-tuned TL;DR summaries, side by side"  # the Hub allows 60 characters
TLDR_DATASET = "openai/summarize_from_feedback"

APP = '''"""Hugging Face Space written by `preftune space`: base vs DPO-tuned TL;DR summaries, side by side.

Models, reward rule, limits and example posts come from demo.json; the app is preftune's own
(preftune/serve/app.py, copied beside this file). Run locally with `python app.py`.
"""

import json
import os
from pathlib import Path

from preftune.config import ServeConfig
from preftune.serve.app import build_app, launch
from preftune.serve.demo import Demo, DemoSpec

HERE = Path(__file__).resolve().parent
SPEC = DemoSpec.from_json(json.loads((HERE / "demo.json").read_text(encoding="utf-8")))
# votes: the Space's persistent storage when it has some (/data), else beside the app (lost on restart)
VOTES = Path("/data" if os.access("/data", os.W_OK) else HERE) / "preferences.jsonl"
DEMO = Demo(SPEC)  # loads the models on first use
demo = build_app(DEMO, VOTES)

if __name__ == "__main__":
    DEMO.load()
    launch(demo, ServeConfig(host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                             port=int(os.environ.get("GRADIO_SERVER_PORT", 7860))))
'''

BODY = """
# {title}

The **base** model `{base}` and the **DPO-tuned** model [`{model}`](https://huggingface.co/{model})
summarize the same Reddit post side by side, streaming. Under each summary: its length and its
implicit reward by the run's own rule, as `preftune eval` scores it: {reward}. The "which is better?"
buttons save your vote as a comparison in OpenAI's `summarize_from_feedback` format
(`preferences.jsonl`; kept across restarts only with persistent storage mounted at `/data`).

Written by `preftune space` from the run `{run}`; the app is preftune's `serve` app, copied into
`preftune/`. Settings in `demo.json`.

## API
```python
from gradio_client import Client
client = Client("{space}")
base, tuned, base_info, tuned_info = client.predict(
    "relationships", "My title", "The post ...", 0.0, 1.0, 48, 0, api_name="/summarize")
# arguments: subreddit, title, post, temperature (0 = greedy), top_p, max_new_tokens, seed
```
"""


def requirements() -> str:
    """The app's runtime (gradio comes from the card's sdk_version), at least the versions it was
    written with, below their next major."""
    lines = ["# written by `preftune space`; gradio itself is installed from README.md's sdk_version"]
    lines.append("torch>=2.4,<3")
    for dist in ("transformers", "huggingface_hub", "safetensors", "filelock"):  # filelock: the votes' lock
        version = importlib.metadata.version(dist)
        lines.append(f"{dist}>={version},<{int(version.split('.')[0]) + 1}")
    return "\n".join(lines) + "\n"


def card(spec: dict, space_id: str, license: str, datasets: list[str]) -> str:
    from huggingface_hub import SpaceCardData

    title = f"{spec['name']} demo"
    data = SpaceCardData(
        title=title, emoji="⚖️", colorFrom="indigo", colorTo="green", sdk="gradio",
        sdk_version=importlib.metadata.version("gradio"),
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        app_file="app.py", models=[spec["policy"], spec["base"]], datasets=datasets or None,
        tags=["dpo", "preftune", "summarization", "tldr"], license=license, short_description=SHORT_DESCRIPTION,
    )
    body = BODY.format(title=title, base=spec["base"], model=spec["policy"], reward=reward_text(DemoSpec.from_json(spec)),
                       run=spec["name"], space=space_id)
    return f"---\n{data.to_yaml()}\n---\n{body}"


def default_ids(run_name: str, cfg: SpaceConfig, owner: str | None) -> tuple[str, str]:
    """(Space id, model repo id): the model under `preftune push`'s default name unless given."""
    owner = cfg.repo_id.split("/")[0] if cfg.repo_id else owner
    if owner is None and not (cfg.repo_id and cfg.model_repo):
        raise PreftuneError("pass --repo-id OWNER/NAME (the Space) and/or --model-repo OWNER/NAME (the "
                            "model `preftune push` uploaded), or --push to use your Hub user name")
    return cfg.repo_id or f"{owner}/{run_name}-demo", cfg.model_repo or f"{owner}/{run_name}"


def hub_base(run: Run, base: str | None) -> str:
    """The base model as a hub id: a Space cannot read a local folder of this machine."""
    spec = base or run.reference_model
    if not is_hub_id(spec):
        raise PreftuneError(f"the run's base model '{spec}' is not a hub id (a local folder?), which a Space "
                            "cannot load: pass --base OWNER/NAME, its hub id")
    return spec


def hub_reference(spec: DemoSpec, run: Run) -> DemoSpec:
    """The spec with its reward's reference as a Space can load it: a hub id as it is; the run's base model
    as a local folder: the hub base (--base stands for it); a local SFT (or DPO) run: none, and no reward
    shown (a Space cannot load that folder; a different reference would show a number unlike eval.json's)."""
    if spec.reference is None or is_hub_id(spec.reference):
        return spec
    if spec.reference_kind == "base":
        return replace(spec, reference=spec.base)
    logger.warning(f"warning: the run's reference {run.reference_model} is a local folder, which a Space cannot load: "
                   "its page shows no implicit reward")
    return replace(spec, reward=None, ld_alpha=None, reference=None)


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried, then removed: permission bits do not tell, e.g.
    for root or on read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_out(out: str | Path) -> Path:
    """--out as a folder the Space can be written into, refused before any work when it cannot be: empty,
    a file (or /dev/null), under a file, or not writable."""
    text = str(out)
    if not text.strip():
        raise PreftuneError("--out is empty: give the folder to write the Space into, e.g. --out space/")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise PreftuneError(f"--out {path} is a file, not a folder: give a folder to write the Space into")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise PreftuneError(f"--out {path}: {existing} is a file, so no folder can be made under it")
    if not _writable(existing):
        raise PreftuneError(f"--out {path}: {existing} is not writable; choose a folder you can write to")
    return path


def write_space(run_dir: Path, out: Path, cfg: SpaceConfig, owner: str | None = None) -> str:
    """Write the Space folder; returns the Space id."""
    run = open_run(run_dir)
    base = hub_base(run, cfg.base)
    # the folder's name, as `preftune push` names the model repo by default (sweeps may suffix it)
    space_id, model_repo = default_ids(Path(run_dir).resolve().name, cfg, owner)
    serve = ServeConfig()
    limits = Limits(serve.max_post_chars, serve.max_prompt_tokens, serve.max_new_tokens_cap)
    spec = replace(hub_reference(spec_from_run(run_dir, base, limits, cfg.examples), run), policy=model_repo).to_json()
    dataset = str(run.config["data"].get("dataset", ""))
    datasets = [TLDR_DATASET] if dataset in ("tldr-sample", TLDR_DATASET) else []

    if out.exists() and any(out.iterdir()) and not (out / "demo.json").is_file():
        raise PreftuneError(f"{out} exists and is not a Space folder written by `preftune space`: choose another --out")
    shutil.rmtree(out / "preftune", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(card(spec, space_id, cfg.license, datasets), encoding="utf-8")
    (out / "app.py").write_text(APP, encoding="utf-8")
    (out / "requirements.txt").write_text(requirements(), encoding="utf-8")
    (out / "demo.json").write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copytree(Path(preftune.__file__).parent, out / "preftune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sample"))
    return space_id


def push_space(folder: Path, space_id: str, private: bool) -> str:
    """Create the Space (gradio SDK) if needed and upload the folder; returns the Space's URL.
    Hub failures become one-line errors that say what to do (preftune.hub.models.hub_errors, as `push` does)."""
    from huggingface_hub import HfApi

    from preftune.hub.upload import hub_errors

    api = HfApi(token=_token())
    with hub_errors(space_id):
        url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=space_id, repo_type="space",
                          commit_message=f"preftune space: {space_id}")
    return str(url)


def _token() -> str:
    from preftune.hub.upload import TOKEN_HELP, hub_token

    token = hub_token()
    if token is None:
        raise PreftuneError(f"no Hugging Face token found: {TOKEN_HELP}")
    return token


def whoami() -> str:
    from huggingface_hub import HfApi

    from preftune.hub.upload import hub_errors

    with hub_errors(None):
        return HfApi(token=_token()).whoami()["name"]


def check_ids(cfg: SpaceConfig) -> None:
    """--repo-id, --model-repo and --base, where given, are hub ids (preftune.hubids' one rule)."""
    for flag, value in (("--repo-id", cfg.repo_id), ("--model-repo", cfg.model_repo), ("--base", cfg.base)):
        if value is not None:
            check_repo_id(value, flag)


def space(run_dir: Path, out: str | Path, cfg: SpaceConfig) -> str:
    """`preftune space`: check --out and the ids, write the folder, then push it with --push."""
    out = check_out(out)
    check_ids(cfg)
    open_run(run_dir)
    owner = whoami() if cfg.push and not cfg.repo_id else None
    space_id = write_space(run_dir, out, cfg, owner)
    logger.info(f"space: wrote {out}/ (README.md, app.py, requirements.txt, demo.json, preftune/) for {space_id}")
    if cfg.push:
        url = push_space(out, space_id, cfg.private)
        logger.info(f"space: pushed to {url}")
    else:
        logger.info(f"space: to publish it, run again with --push (or: hf upload {space_id} {out} --repo-type space)")
    return space_id
