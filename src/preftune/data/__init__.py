"""Preference data: sources → adapters → cleaning → post-disjoint split → truncation."""

from preftune.data.prepare import Pair, Prepared, Tally, prepare, write_prepared

__all__ = ["Pair", "Prepared", "Tally", "prepare", "write_prepared"]
