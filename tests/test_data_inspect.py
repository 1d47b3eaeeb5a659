"""`preftune data inspect`: counts checked against a hand count of the shipped sample, nearest-rank
percentiles worked by hand, the table and JSON outputs, and bounded memory on a large file."""

import json
import tracemalloc
from collections import Counter, defaultdict

import numpy as np
import pytest
from conftest import comparison, shipped_rows, write_jsonl
from test_data_cli import main

from preftune.config import DataConfig
from preftune.data.inspect import (
    WIDTH,
    inspect_data,
    percentile,
    repeated_labels,
    token_table,
)
from preftune.data.prepare import Reading, iter_pairs, load_pairs
from preftune.data.truncate import pair_length


def hand_count(rows: list[dict]) -> dict:
    """The sample's numbers, counted from the raw rows without the adapter."""
    posts = {(r["info"]["subreddit"], r["info"]["title"], r["info"]["post"]) for r in rows}
    votes = defaultdict(Counter)  # (post, {a, b}) → how often each summary won
    for r in rows:
        texts = [s["text"] for s in r["summaries"]]
        votes[(r["info"]["id"], frozenset(texts))][texts[r["choice"]]] += 1
    dup = outvoted = tied = 0
    for v in votes.values():
        counts = sorted(v.values(), reverse=True) + [0]
        if counts[0] == counts[1]:
            tied += counts[0] + counts[1]
        else:
            dup, outvoted = dup + counts[0] - 1, outvoted + counts[1]
    longer = sum(len(r["summaries"][r["choice"]]["text"]) > len(r["summaries"][1 - r["choice"]]["text"]) for r in rows)
    return {"rows": len(rows), "distinct_prompts": len(posts),
            "labels": {f"choice {k}": n for k, n in sorted(Counter(r["choice"] for r in rows).items())},
            "repeated": {"duplicate label": dup, "outvoted label": outvoted, "tied labels": tied},
            "chosen_longer": longer / len(rows)}


@pytest.fixture(scope="module")
def shipped_report(tiny_model):
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["data", "inspect", "--model", str(tiny_model), "--length-sample", "200", "--max-length", "1000",
                     "--json"]) == 0
    return json.loads(buf.getvalue())


def test_shipped_sample_counts_match_a_hand_count(shipped_report):
    r, hand = shipped_report, hand_count(shipped_rows())
    assert r["format"] == "summarize_from_feedback" and r["detected_from"][:3] == ["batch", "choice", "extra"]
    assert (r["rows"], r["kept"], r["skipped"]) == (1771, 1771, {})
    assert r["distinct_prompts"] == hand["distinct_prompts"] == 1003
    assert r["labels"] == hand["labels"] == {"choice 0": 974, "choice 1": 797}
    # the repeated comparisons are what `prepare` resolves (test_prepare: 169, 44, 16 → 1,542 pairs)
    assert r["repeated"] == hand["repeated"] == {"duplicate label": 169, "outvoted label": 44, "tied labels": 16}
    assert r["pairs_after_cleaning"] == 1542
    assert r["chosen_longer"] == pytest.approx(hand["chosen_longer"]) and round(r["chosen_longer"], 2) == 0.65
    assert r["identical_pairs"] == 0 and r["empty_fields"] == {}
    assert [s["source"] for s in r["samples"]] == [f"tldr-sample/tldr_comparisons.jsonl.gz:{i}" for i in (1, 2, 3)]


def test_token_lengths_match_pair_by_pair_measurement(shipped_report, tiny_tokenizer, tmp_path):
    """Percentiles equal numpy's nearest-rank ('inverted_cdf') over lengths measured pair by pair, and
    the pairs over --max-length are those TRL's tokenization makes longer (truncate.pair_length)."""
    t = shipped_report["tokens"]
    assert (t["pairs"], t["sampled"]) == (200, True)  # a sample of the 1,771; the counts above are all rows
    src = write_jsonl(tmp_path / "head.jsonl", shipped_rows(120))
    pairs, _, _ = load_pairs(DataConfig(dataset=str(src)))
    r = inspect_data(DataConfig(dataset=str(src)), tiny_tokenizer, "tiny", 900)
    eos = tiny_tokenizer.eos_token
    measured = {"prompt": [len(tiny_tokenizer(p.prompt)["input_ids"]) for p in pairs],
                "chosen": [len(tiny_tokenizer(p.chosen + eos, add_special_tokens=False)["input_ids"]) for p in pairs]}
    assert (r["tokens"]["pairs"], r["tokens"]["sampled"]) == (120, False)
    for name, values in measured.items():
        expected = {f"p{q}": int(np.percentile(values, q, method="inverted_cdf")) for q in (50, 90, 99)}
        assert r["tokens"][name] == {**expected, "max": max(values)}
    exact = [pair_length(tiny_tokenizer, p) for p in pairs]
    assert r["max_length"]["over"] == sum(n > 900 for n in exact) > 0
    assert r["max_length"]["trimmed"] + sum(r["max_length"]["skipped"].values()) == r["max_length"]["over"]


def test_nearest_rank_percentiles_by_hand():
    values = list(range(1, 11))  # 1..10: p50 is the 5th value, p90 the 9th, p99 the 10th
    assert [percentile(values, q) for q in (50, 90, 99)] == [5, 9, 10]
    assert percentile([7], 50) == percentile([7], 99) == 7
    assert percentile([1, 2, 3, 100], 50) == 2  # ceil(0.5 · 4) = 2nd value


def test_repeated_labels_resolve_like_prepare():
    # groups: 2 forward + 1 reverse; 1 + 1; 3 + 0 (packed forward << 32 | reverse)
    groups = {1: (2 << 32) | 1, 2: (1 << 32) | 1, 3: 3 << 32}
    assert repeated_labels(groups) == {"duplicate label": 1 + 2, "outvoted label": 1, "tied labels": 2}


def test_table_names_skips_and_samples(tiny_model, tmp_path, capsys):
    rows = [{"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(5)]
    rows += [{"prompt": "Q?", "chosen": " same", "rejected": " same"}, {"prompt": "Q?", "chosen": "", "rejected": " x"},
             rows[0]]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    assert main(["data", "inspect", "--dataset", str(src), "--model", str(tiny_model), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "format             prompt_chosen_rejected (detected from columns chosen, prompt, rejected)" in out
    assert "rows               8\n" in out
    assert "kept               6 (75.0%); skipped 2: identical pair 1, empty chosen 1" in out
    assert "distinct prompts   5" in out and "label balance      not in this format" in out
    assert "repeated pairs     duplicate label 1 → 5 pairs after `prepare`" in out
    assert "empty fields       empty chosen 1" in out
    assert f"[{src}:1]\n  prompt   \"Q0?\"\n  chosen   \" yes 0\"" in out
    assert "0 (0.0%) exceed --max-length 512" in out


def test_length_sample_is_a_seeded_reservoir(tiny_tokenizer):
    a = inspect_data(DataConfig(), tiny_tokenizer, "tiny", 4096, length_sample=50)
    b = inspect_data(DataConfig(), tiny_tokenizer, "tiny", 4096, length_sample=50)
    c = inspect_data(DataConfig(seed=1), tiny_tokenizer, "tiny", 4096, length_sample=50)
    assert (a["tokens"]["pairs"], a["tokens"]["sampled"]) == (50, True)
    assert a["tokens"] == b["tokens"] and a["tokens"] != c["tokens"]
    assert a["rows"] == 1771  # the counts are never sampled


def big_file(path, n: int):
    post = "I went to the shop and bought some bread and some milk, then walked home. " * 30
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"POST {i}: {post}\nTL;DR:", "chosen": f" bread {i}",
                                 "rejected": f" milk {i}"}) + "\n")
    return path


def peaks(src, tokenizer) -> tuple[int, int, int]:
    """(pairs, peak bytes of a streaming pass, peak bytes of inspect) under tracemalloc."""
    cfg = DataConfig(dataset=str(src))
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_pairs(cfg, Reading()))
        _, stream_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        report = inspect_data(cfg, tokenizer, "tiny", 512, samples=1, length_sample=20)
        _, inspect_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["kept"] == n
    return n, stream_peak, inspect_peak


def test_reading_streams_in_bounded_memory(tmp_path, tiny_tokenizer):
    """Reading + adapting holds one row at a time: its peak does not grow with the file (1k vs 4k rows,
    2.3 MB vs 9.4 MB), so a 1 GB file needs the same. Inspect keeps two 8-byte digests per pair (distinct
    prompts, repeated comparisons): < 400 bytes per pair, a fraction of the rows' bytes (TL;DR rows: ~2 KB)."""
    small, big = big_file(tmp_path / "small.jsonl", 1000), big_file(tmp_path / "big.jsonl", 4000)
    _, small_stream, small_inspect = peaks(small, tiny_tokenizer)
    n, big_stream, big_inspect = peaks(big, tiny_tokenizer)
    assert big.stat().st_size > 9_000_000
    assert big_stream < 200_000 and big_stream < 2 * small_stream + 50_000  # flat in the file size
    assert (big_inspect - small_inspect) / (n - 1000) < 400
    assert big_inspect < big.stat().st_size / 4


@pytest.mark.slow
def test_shipped_sample_with_the_default_models_tokenizer(real_model_path, capsys):
    """The one check with the real tokenizer (SmolLM2's): every kept pair measured; the longest prompt
    agrees with a direct tokenization of all prompts."""
    from transformers import AutoTokenizer

    assert main(["data", "inspect", "--model", real_model_path, "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert f"tokens ({real_model_path}, all 1,771 kept pairs" in out
    rows = {line.split()[0]: [int(v.replace(",", "")) for v in line.split()[1:]]
            for line in out.splitlines() if line.startswith("  ") and line.split()[0] in
            ("prompt", "chosen", "rejected", "sequence")}
    for p50, p90, p99, top in rows.values():
        assert p50 <= p90 <= p99 <= top
    pairs, _, _ = load_pairs(DataConfig())
    tok = AutoTokenizer.from_pretrained(real_model_path)
    assert rows["prompt"][3] == max(len(ids) for ids in tok([p.prompt for p in pairs])["input_ids"]) == 527
    assert rows["prompt"][0] == 347  # TL;DR prompts: median 347 tokens, p99 508 with SmolLM2's tokenizer
    assert "165 (9.3%) exceed --max-length 512: 165 would have their prompt trimmed" in out


# ---- prepared folders, labeller confidence, wide values ----------------------------------------------


def test_inspect_reads_a_prepared_folder(tmp_path, tiny_model, capsys):
    """All three splits are inspected as prepared (the rows are the prepared pairs), with their sizes."""
    folder = tmp_path / "prep"
    assert main(["data", "prepare", "--fraction", "0.05", "--out", folder]) == 0
    stats = json.loads((folder / "stats.json").read_text())
    sizes = {name: stats[name]["pairs"] for name in ("train", "validation", "test")}
    capsys.readouterr()
    assert main(["data", "inspect", "--dataset", folder, "--model", tiny_model, "--samples", "1", "--length-sample", "20",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout is the JSON object alone: log lines go to stderr
    assert f"data: prepared folder {folder}: train {sizes['train']} pairs" in err
    assert report["splits"] == sizes and report["rows"] == report["kept"] == sum(sizes.values())
    assert report["format"] == "summarize_from_feedback" and report["detected_from"] is None
    assert report["repeated"] == {"duplicate label": 0, "outvoted label": 0, "tied labels": 0}  # already resolved
    assert main(["data", "inspect", "--dataset", folder, "--model", tiny_model, "--samples", "0", "--length-sample", "20"]) == 0
    table = capsys.readouterr().out
    assert "format             summarize_from_feedback (a prepared folder)" in table
    assert f"splits             train {sizes['train']:,}, validation {sizes['validation']:,}, test " in table


def test_confidence_distribution_matches_a_hand_count(shipped_report):
    hand = Counter(r["extra"]["confidence"] for r in shipped_rows())
    assert shipped_report["confidence"] == {str(k): hand[k] for k in sorted(hand)}
    assert sum(shipped_report["confidence"].values()) == 1771 and "5" not in shipped_report["confidence"]


def test_confidence_row_in_the_table(tiny_model, tmp_path, capsys):
    rows = [comparison(post_id=f"p{i}", chosen=f" s{i}", extra={"confidence": c}) for i, c in enumerate((1, 1, 3, None))]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    assert main(["data", "inspect", "--dataset", src, "--model", tiny_model, "--samples", "0"]) == 0
    assert "confidence         1: 2 (50.0%), 3: 1 (25.0%), none: 1 (25.0%) (labeller's extra.confidence" in \
        capsys.readouterr().out
    plain = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q?", "chosen": " a", "rejected": " b"}])
    assert main(["data", "inspect", "--dataset", plain, "--model", tiny_model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confidence"] is None


def test_wide_values_keep_the_table_bounded(tiny_model, tmp_path, capsys):
    """A long post and a 300-character column name: every line stays bounded, long cells end in "…"."""
    wide = "x" * 300
    rows = [{"prompt": "word " * 60_000 + "TL;DR:", "chosen": " a", "rejected": " b", wide: "1"},
            {"prompt": "Short?", "chosen": " yes", "rejected": " no", wide: "2"}]
    src = write_jsonl(tmp_path / "wide.jsonl", rows)
    assert main(["data", "inspect", "--dataset", src, "--model", tiny_model, "--samples", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 2 * WIDTH
    assert any(("x" * 39 + "…") in line for line in lines) and not any(wide in line for line in lines)
    assert any(line.startswith('  prompt   "word word') and line.endswith("…") for line in lines)


def test_token_table_stays_aligned_for_huge_counts():
    """A 5 MB post has millions of tokens: the columns widen to the widest number, all rows alike."""
    lengths = {"p50": 12, "p90": 340, "p99": 5_000, "max": 1_234_567}
    t = {"tokenizer": "tiny", "pairs": 3, "sampled": False, **{k: dict(lengths) for k in
                                                                ("prompt", "chosen", "rejected", "sequence")}}
    t["sequence"]["max"] = 1_234_599
    lines = token_table(t, {"limit": 512, "over": 1, "trimmed": 1, "skipped": {}})
    header, rows = lines[1], lines[2:6]
    assert header == "  " + " " * 10 + "".join(f"{k:>11}" for k in ("p50", "p90", "p99", "max"))  # "1,234,599" + 2
    assert rows[3] == "  sequence  " + "         12        340      5,000  1,234,599"
    assert {len(line) for line in rows} == {len(header)}
