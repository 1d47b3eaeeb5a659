"""Preference data: sources → adapters → cleaning → post-disjoint split (train / validation / test) →
truncation. One module per concept: sources.py (where rows come from), adapters.py (+ chat.py: rows →
pairs), pairs.py (the Pair and the skip Tally), prepare.py (the pipeline), split.py, folder.py (the
prepared folder), options.py + balance.py (--min-confidence, --length-balance: which training pairs a run uses),
truncate.py + fit.py (fitting --max-length), inspect.py, cli.py (the `data` verbs)."""

from preftune.data.prepare import Pair, Prepared, Tally, prepare, write_prepared

__all__ = ["Pair", "Prepared", "Tally", "prepare", "write_prepared"]
