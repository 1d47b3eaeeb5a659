"""Until the three-way split (train / validation / test) of `prepare()` is on this branch, give it that
shape in tests: the held-out posts are halved, by post, into validation and test. Once `Prepared` has a
`validation` field this does nothing (delete the file then)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from types import SimpleNamespace

import pytest


@contextlib.contextmanager
def three_way_split():
    dp = importlib.import_module("preftune.data.prepare")  # the module: preftune.data exports a function of that name

    if "validation" in {f.name for f in dataclasses.fields(dp.Prepared)}:
        yield
        return
    real = dp.prepare

    def prepare(cfg, *args, **kwargs):
        prepared = real(cfg, *args, **kwargs)
        posts = {p.post_id for p in prepared.eval}
        halve = cfg.test_fraction and len(posts) >= 2
        validation, test = dp.split_by_post(prepared.eval, 0.5, cfg.seed) if halve else (prepared.eval, [])
        return SimpleNamespace(train=prepared.train, validation=validation, eval=validation, test=test,
                               stats=prepared.stats)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dp, "prepare", prepare)
        mp.setattr("preftune.train.prepare", prepare)
        yield
