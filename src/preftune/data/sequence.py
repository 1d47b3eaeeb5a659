"""The one rule for how a completion becomes a training sequence: prompt + completion + EOS, with
EOS added only when the completion does not already end with it (TRL's DPOTrainer and
RewardTrainer do the same, so lengths, truncation and log-probs agree with TRL's)."""

from __future__ import annotations


def with_eos(completion: str, eos: str | None) -> str:
    """The completion ending with exactly one EOS (unchanged when it already ends with it)."""
    return completion if not eos or completion.endswith(eos) else completion + eos


def sequence_text(prompt: str, completion: str, eos: str | None) -> str:
    return prompt + with_eos(completion, eos)
