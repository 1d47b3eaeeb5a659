"""The configs of the commands that publish a run: `push`, `data push`, `serve`, `space`."""

from __future__ import annotations

from dataclasses import dataclass

from preftune.config.fields import Config, _opt, flag_name
from preftune.config.registries import INFERENCE_PRECISION
from preftune.errors import PreftuneError
from preftune.hubids import check_repo_id

# Validation metrics a leaderboard can be ranked by (higher is better); report.RANKINGS implements them.
RANK_KEYS = ("length_balanced_accuracy", "accuracy", "mean_margin", "chosen_shorter_accuracy", "chosen_longer_accuracy")


@dataclass
class ServeConfig(Config):
    base: str | None = _opt(None, "Base model shown beside the tuned one (default: the run's reference model).")
    host: str = _opt("127.0.0.1", "Address to listen on (0.0.0.0 to let other machines in).")
    port: int = _opt(7860, "Port to listen on (0: any free port).", ge=0, le=65535)
    feedback: str | None = _opt(
        None, "JSONL file the 'which is better?' votes are appended to, in the summarize_from_feedback "
        "comparison format (default: RUN_DIR/preferences.jsonl).")
    max_post_chars: int = _opt(8000, "Longest post accepted, in characters (subreddit + title + post).", gt=0)
    max_prompt_tokens: int = _opt(1024, "Longest prompt accepted, in tokens; cost grows with it.", gt=0)
    max_new_tokens_cap: int = _opt(256, "Largest --max-new-tokens a request may ask for.", gt=0)
    concurrency: int = _opt(1, "Generations run at once; further requests wait in the queue (CPU: 1).", gt=0)
    queue_size: int = _opt(16, "Requests that may wait in the queue; more are refused with a message.", gt=0)
    precision: str = _opt(**INFERENCE_PRECISION)


@dataclass
class SpaceConfig(Config):
    repo_id: str | None = _opt(None, "The Space, OWNER/NAME (default with --push: <your user>/<run name>-demo).")
    model_repo: str | None = _opt(
        None, "Hub model repo the Space loads the tuned model from, OWNER/NAME (default: OWNER/<run name>, "
        "where `preftune push` puts the run, OWNER taken from --repo-id).")
    base: str | None = _opt(None, "Base model hub id (default: the run's reference model, if it is a hub id).")
    push: bool = _opt(False, "Create the Space on the Hub and upload the folder (token: HF_TOKEN or `hf auth login`).")
    private: bool = _opt(False, "Make the Space private when --push creates it.")
    license: str = _opt("apache-2.0", "License in the Space card (SmolLM2-135M-Instruct is apache-2.0).")
    examples: int = _opt(20, "Held-out posts from the run's eval_pairs.jsonl offered as examples in the Space.", ge=0)

    def check(self) -> None:
        for name in ("repo_id", "model_repo", "base"):  # all three are hub ids: the Space cannot read local folders
            if getattr(self, name) is not None:
                check_repo_id(getattr(self, name), flag_name(name))


@dataclass
class PushConfig(Config):
    repo_id: str | None = _opt(None, "Hub repo OWNER/NAME for one run (default: the run name under --namespace).")
    namespace: str | None = _opt(None, "User or organization to push to (default: the token's owner, from whoami).")
    private: bool = _opt(False, "Create the repo private (an existing repo keeps its visibility).")
    best: int | None = _opt(None, "Push the N best runs of the sweep folder ROOT, by held-out accuracy.", gt=0)
    dry_run: bool = _opt(False, "Write each folder exactly as it would be uploaded (model, card, plot), print the "
                                "plan, upload nothing. Works offline and without a token.")
    stage_dir: str | None = _opt(None, "Where --dry-run writes the upload folders (default: ROOT/hub_upload/).")
    license: str | None = _opt(None, "License for the model card (default: the base model's when known, else 'other').")
    base_model: str | None = _opt(None, "Hub id of the base model for the card, when the run was trained from a local "
                                        "copy of it (default: the run's --model when that is a hub id).")
    rank_by: str = _opt("length_balanced_accuracy", "With --best: the validation metric runs are ranked by "
                        "(higher is better; runs without it are never picked).",
                        choices=RANK_KEYS)

    def check(self) -> None:
        if self.repo_id and (self.best or self.namespace):
            raise PreftuneError("--repo-id names one repo: use --namespace with --best, or push runs one at a time")


@dataclass
class DataPushConfig(Config):
    """`preftune data push DIR`: a prepared folder or the demo's preferences.jsonl → a Hub dataset repo."""

    repo_id: str | None = _opt(None, "The dataset repo to push to, OWNER/NAME (required).")
    private: bool = _opt(False, "Create the repo private (an existing repo keeps its visibility).")
    dry_run: bool = _opt(False, "Write the folder exactly as it would be uploaded (Parquet files per split, the "
                                "dataset card), print the plan, upload nothing. Works offline and without a token.")
    stage_dir: str | None = _opt(None, "Where --dry-run writes the upload folder, as STAGE/datasets/NAME (default: "
                                       "hub_upload/ beside DIR).")
    license: str | None = _opt(None, "License id for the dataset card (default: the source's when preftune knows "
                                     "it, e.g. OpenAI's Modified MIT notice for the TL;DR data; else 'unknown').")

    def check(self) -> None:
        if self.repo_id is None:
            raise PreftuneError("--repo-id is required: the dataset repo to push to, OWNER/NAME")
        check_repo_id(self.repo_id, "--repo-id")
