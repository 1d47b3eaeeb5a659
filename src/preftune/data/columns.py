"""--column-map NAME=COLUMN: the user's column names onto the ones the adapters read, and back in errors."""

from __future__ import annotations

from preftune.config import registries
from preftune.data.rows import RowError
from preftune.errors import PreftuneError

COLUMNS = registries.COLUMNS  # the names --column-map maps onto (NAME=COLUMN)


def parse_column_map(spec: str | None) -> dict[str, str]:
    """'chosen=good,rejected=bad' → {'chosen': 'good', 'rejected': 'bad'} (NAME=COLUMN)."""
    mapping: dict[str, str] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not name or not column:
            raise PreftuneError(f"--column-map: expected NAME=COLUMN pairs separated by commas, got {item!r}")
        if name not in COLUMNS:
            raise PreftuneError(f"--column-map: unknown name '{name}'; names: {', '.join(COLUMNS)}")
        if name in mapping:
            raise PreftuneError(f"--column-map: '{name}' is mapped twice")
        if column in mapping.values():  # e.g. chosen=a,rejected=a: every pair would be identical
            other = next(n for n, c in mapping.items() if c == column)
            raise PreftuneError(f"--column-map: column '{column}' is mapped to both {other} and {name}")
        mapping[name] = column
    return mapping


def apply_column_map(row: dict, mapping: dict[str, str]) -> dict:
    """The row with its columns renamed NAME ← COLUMN; a mapped column the row lacks is an error."""
    if not mapping:
        return row
    for name, column in mapping.items():
        if column not in row:
            raise RowError(column, f"missing column (found: {', '.join(sorted(row))}); --column-map {name}={column}")
    out = {k: v for k, v in row.items() if k not in mapping.values()}
    out.update({name: row[column] for name, column in mapping.items()})
    return out


def source_field(field_path: str | None, mapping: dict[str, str]) -> str | None:
    """A field path in the user's column names: 'chosen[0].role' → 'good[0].role' for chosen=good."""
    if not field_path or not mapping:
        return field_path
    for name, column in mapping.items():
        if field_path == name or field_path.startswith((name + "[", name + ".")):
            return column + field_path[len(name):]
    return field_path


def guess_column(name: str, unused: list[str], n_missing: int) -> str:
    """The user's column for `name`: one spelled the same but for case/spaces, else the only unused one."""
    for column in unused:
        if column.strip().lower() == name:
            return column
    return unused[0] if n_missing == 1 and len(unused) == 1 else "COLUMN"
