"""User-facing errors: the CLI prints these as one clear message (no traceback) and exits non-zero."""


class PreftuneError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class DataError(PreftuneError):
    """Bad input data. The message names the source, the line/row and the field."""

    def __init__(self, source: str, line: int | None, field: str | None, message: str):
        self.source, self.line, self.field = source, line, field
        where = source if line is None else f"{source}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
