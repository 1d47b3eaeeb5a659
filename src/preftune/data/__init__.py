"""Preference data: sources → adapters → cleaning → post-disjoint split (train / validation / test) →
truncation. One module per concept; the map is in docs/architecture.md. Nothing is imported here, so
preftune.config can read the adapters' names without loading the data pipeline."""
