"""Render message lists with the model's chat template into the plain text TRL and preftune tokenize.

A pair is tokenized as tokenizer(prompt + completion + eos), EOS added only when the completion does not
end with it (as TRL's DPOTrainer). Two traps of rendered chats are avoided here: a double BOS (a template
that writes BOS as text for a tokenizer that adds one) and a double EOS (a turn ending in EOS + "\n").
The prompt ends with the generation prompt; a reply is what the conversation with the reply adds to it.
Details: docs/data.md.
"""

from __future__ import annotations

import os

from preftune.data.rows import ChatFields, PairFields, RowError
from preftune.errors import PreftuneError


class ChatRenderer:
    def __init__(self, tokenizer, name: str):
        if not getattr(tokenizer, "chat_template", None):
            raise PreftuneError(f"the tokenizer of {name} has no chat template, and conversational rows need one: "
                                "pass --model with a chat model")
        self.tokenizer, self.name, self.eos = tokenizer, name, tokenizer.eos_token
        adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        self.text_bos = tokenizer.bos_token if adds_bos else None

    def text(self, msgs: list[dict], generation_prompt: bool) -> str:
        try:
            out = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 - templates raise what they like (raise_exception, TemplateError)
            raise RowError("prompt", f"the chat template of {self.name} rejects this conversation: "
                           f"{str(e).splitlines()[0][:160]}") from None
        if self.text_bos and out.startswith(self.text_bos):
            out = out[len(self.text_bos):]
        return out

    def reply(self, prompt: list[dict], prompt_text: str, reply: list[dict], path: str) -> str:
        full = self.text(prompt + reply, generation_prompt=False)
        if not full.startswith(prompt_text):
            raise RowError(path, f"the chat template of {self.name} renders the prompt differently alone than "
                           "followed by a reply, so prompt and completion cannot be split as text")
        completion = full[len(prompt_text):]
        stripped = completion.rstrip()
        return stripped if self.eos and stripped.endswith(self.eos) else completion

    def droppable_turns(self, msgs: list[dict], prompt_text: str) -> tuple[tuple[int, int] | None, tuple[int, ...]]:
        """Where the oldest turns may be dropped to fit --max-length (cut="turns").

        For each later user message k, the prompt rendered from the system message(s) + msgs[k:] must
        equal `prompt_text` with one substring [a, t_k) removed; then t_k is a cut point. Template-agnostic:
        a template for which this does not hold gets no cut points (such pairs are not trimmed)."""
        system = next((i for i, m in enumerate(msgs) if m["role"] != "system"), len(msgs))
        shorter = [self.text(msgs[:system] + msgs[k:], generation_prompt=True)
                   for k in range(system + 1, len(msgs)) if msgs[k]["role"] == "user"]
        if not shorter:
            return None, ()
        a = min(len(os.path.commonprefix([prompt_text, s])) for s in shorter)
        cuts = [len(prompt_text) - len(s) + a for s in shorter]
        cuts = sorted(t for t, s in zip(cuts, shorter) if t > a and prompt_text[:a] + prompt_text[t:] == s)
        return ((a, cuts[-1]), tuple(cuts)) if cuts else (None, ())

    def render(self, chat: ChatFields) -> PairFields:
        prompt = self.text(chat.prompt, generation_prompt=True)
        chosen = self.reply(chat.prompt, prompt, chat.chosen, "chosen")
        rejected = self.reply(chat.prompt, prompt, chat.rejected, "rejected")
        span, turns = self.droppable_turns(chat.prompt, prompt)
        return PairFields(prompt, chosen, rejected, chat.post_id, span, chat.meta, cut="turns", turns=turns)
