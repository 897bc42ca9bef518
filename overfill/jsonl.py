"""Reading JSONL data files: one JSON object per non-blank line, errors naming `file:line`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_jsonl(path: str | Path, error: type[ValueError]) -> Iterator[tuple[str, dict]]:
    """Yields (where, record) with where = "path:line"; raises `error` for a line that is not a JSON object."""
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object")
        yield where, record
