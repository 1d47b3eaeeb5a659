"""Message-list formats rendered with the model's chat template: no double BOS/EOS, turn dropping to fit
max_length, and `data prepare` output that loads directly into TRL's DPOTrainer and into preftune."""

import json
import shutil

import pytest
from conftest import write_jsonl
from test_data_cli import main

from preftune.config import DataConfig
from preftune.data.adapters import conversational
from preftune.data.chat import ChatRenderer
from preftune.data.prepare import Pair, Tally, prepare
from preftune.data.truncate import fit_pair, fit_pairs, pair_length
from preftune.dpo.logps import tokenize_completion

# A ChatML-like template with both traps: it writes BOS as text, and ends each turn with EOS + "\n".
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{{ eos_token }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tiny_model, tmp_path_factory):
    """The tiny Llama with a tokenizer that adds BOS itself and has TEMPLATE as its chat template."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_model, folder, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"bos_token": "<|bos|>"})
    bos = tok.convert_tokens_to_ids("<|bos|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", bos)])
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))  # the new BOS needs an embedding row
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_tokenizer(chat_model):
    from preftune.models import load_tokenizer

    return load_tokenizer(str(chat_model))


def msg(role, content):
    return {"role": role, "content": content}


def conv_row(i: int, turns: int = 1) -> dict:
    prompt = [msg("system", "Be brief.")]
    for t in range(turns - 1):
        prompt += [msg("user", f"Earlier question {t} of row {i}, " + "with some words " * 8),
                   msg("assistant", f"Earlier answer {t}.")]
    prompt.append(msg("user", f"What is {i} plus {i}?"))
    return {"prompt": prompt, "chosen": [msg("assistant", f"It is {2 * i}.")],
            "rejected": [msg("assistant", f"It is {2 * i + 1}, I think.")]}


def test_rendering_has_one_bos_and_one_eos(chat_tokenizer):
    tok = chat_tokenizer
    pair = ChatRenderer(tok, "tiny-chat").render(conversational(conv_row(3)))
    assert pair.prompt.startswith("<|im_start|>system\nBe brief.") and pair.prompt.endswith("<|im_start|>assistant\n")
    assert pair.chosen == "It is 6." + tok.eos_token
    for completion in (pair.chosen, pair.rejected):
        ids = tokenize_completion(tok, pair.prompt, completion).ids  # exactly what TRL trains on
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
        assert ids[-1] == tok.eos_token_id and ids[-2] != tok.eos_token_id


def test_naive_rendering_would_double_bos_and_eos(chat_tokenizer):
    """The bug the renderer avoids: the template's own text, fed to TRL's plain-text path."""
    tok = chat_tokenizer
    chat = conversational(conv_row(3))
    prompt = tok.apply_chat_template(chat.prompt, tokenize=False, add_generation_prompt=True)
    completion = tok.apply_chat_template(chat.prompt + chat.chosen, tokenize=False)[len(prompt):]
    ids = tokenize_completion(tok, prompt, completion).ids
    assert ids[:2] == [tok.bos_token_id] * 2
    assert ids.count(tok.eos_token_id) - tokenize_completion(tok, *_rendered(tok, chat)).ids.count(tok.eos_token_id) == 1


def _rendered(tok, chat):
    pair = ChatRenderer(tok, "x").render(chat)
    return pair.prompt, pair.chosen


def test_tokenizer_without_bos_keeps_the_template_text(tiny_tokenizer):
    """SmolLM2-like: the tokenizer adds no BOS, so whatever the template writes first stays."""
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = TEMPLATE.replace("{{ bos_token }}", "<|start|>")
    pair = ChatRenderer(tok, "x").render(conversational(conv_row(1)))
    assert pair.prompt.startswith("<|start|><|im_start|>system") and pair.chosen.endswith(tok.eos_token)


def test_oldest_turns_are_dropped_whole_to_fit(chat_tokenizer):
    tok = chat_tokenizer
    renderer = ChatRenderer(tok, "x")
    row = conv_row(2, turns=3)
    f = renderer.render(conversational(row))
    pair = Pair(f.prompt, f.chosen, f.rejected, f.post_id, "t:1", f.body_span, f.meta, f.cut, f.turns)
    assert len(pair.turns) == 2
    only_last = renderer.text([row["prompt"][0], row["prompt"][-1]], generation_prompt=True)
    one_dropped = renderer.text([row["prompt"][0]] + row["prompt"][3:], generation_prompt=True)
    full = pair_length(tok, pair)
    last = pair_length(tok, Pair(only_last, f.chosen, f.rejected, "p", "t"))
    fitted = fit_pair(tok, pair, full - 1)  # one token too long: the oldest exchange goes
    assert fitted.prompt == one_dropped and (fitted.chosen, fitted.rejected) == (f.chosen, f.rejected)
    assert fit_pair(tok, pair, last).prompt == only_last  # the system message and the last question stay
    tally = Tally()
    assert fit_pairs(tok, [pair], last - 1, tally) == ([], 0)
    assert tally.skipped == {"too long for max_length with only the last turn": 1}


def test_unknown_role_and_template_errors_name_the_row(chat_model, tmp_path, capsys):
    row = conv_row(0)
    row["prompt"][1]["role"] = "bot"
    src = write_jsonl(tmp_path / "c.jsonl", [conv_row(1), row])
    code = main(["data", "prepare", "--dataset", str(src), "--model", str(chat_model), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{src}:2: field 'prompt[1].role': unknown role 'bot'; expected one of: system, user, assistant, tool" in err


def test_tokenizer_without_chat_template_is_one_clear_error(tiny_model, tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", [conv_row(1)])
    code = main(["data", "prepare", "--dataset", str(src), "--model", str(tiny_model), "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"the tokenizer of {tiny_model} has no chat template, and conversational rows need one" in capsys.readouterr().err


def uf_parquet(path, n=8):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Say {i}.", "prompt_id": f"id{i}",
             "chosen": [msg("user", f"Say {i}."), msg("assistant", f"{i}.")],
             "rejected": [msg("user", f"Say {i}."), msg("assistant", "No.")],
             "score_chosen": 8.5, "score_rejected": 2.0} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)  # message lists become list<struct<content, role>>
    return path


def test_ultrafeedback_parquet_prepares(chat_model, tmp_path, capsys):
    src = uf_parquet(tmp_path / "uf.parquet")
    assert main(["data", "prepare", "--dataset", str(src), "--model", str(chat_model), "--out", str(tmp_path / "o"),
                 "--eval-fraction", "0.25", "--test-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "format ultrafeedback (detected from columns chosen, prompt, prompt_id, rejected, score_chosen, " \
           f"score_rejected; chat template of {chat_model})" in out
    train = [json.loads(line) for line in open(tmp_path / "o" / "train.jsonl")]
    assert len(train) == 6 and {r["post_id"] for r in train} <= {f"id{i}" for i in range(8)}
    assert train[0]["meta"] == {"score_chosen": 8.5, "score_rejected": 2.0}
    assert train[0]["prompt"].endswith("<|im_start|>user\nSay 0.<|eos|>\n<|im_start|>assistant\n")


def test_prepared_conversations_load_into_trl_and_preftune(chat_model, chat_tokenizer, tmp_path):
    """`data prepare` output → TRL's DPOTrainer (its own dataset tokenization + 1 step) and `--dataset DIR`."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    src = write_jsonl(tmp_path / "conv.jsonl", [conv_row(i, turns=1 + i % 2) for i in range(10)])
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "--dataset", str(src), "--model", str(chat_model), "--out", str(out)]) == 0

    tok = chat_tokenizer
    train = load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
                     use_cpu=True, bf16=False, report_to=[], save_strategy="no", max_length=256,
                     dataset_num_proc=None, disable_tqdm=True)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(chat_model), args=args, train_dataset=train,
                         processing_class=tok)
    for row in trainer.train_dataset:
        assert row["prompt_ids"].count(tok.bos_token_id) == 1 and row["prompt_ids"][0] == tok.bos_token_id
        for ids in (row["chosen_ids"], row["rejected_ids"]):
            assert ids[-1] == tok.eos_token_id and ids[-2] != tok.eos_token_id and tok.bos_token_id not in ids
    assert len(trainer.train_dataset) == len(train) == 8  # 10 rows - 1 validation - 1 test; none dropped by TRL
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss == pytest.approx(0.6931, abs=0.05)

    again = prepare(DataConfig(dataset=str(out)))
    assert [p.prompt for p in again.train] == train["prompt"] and again.train[0].cut == "turns"
