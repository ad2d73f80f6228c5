from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from .ledger import UnreadableRow

Format = Literal["csv", "jsonl"]
EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def detect_format(path: Path) -> Format | None:
    return EXTENSIONS.get(path.suffix.lower())


def read_records(path: Path, fmt: Format) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) for each record; unreadable lines yield UnreadableRow."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if fmt == "csv":
            reader = csv.DictReader(handle)
            for record in reader:
                if None in record:
                    yield reader.line_num, UnreadableRow(message="more values than columns")
                    continue
                if all(not (value or "").strip() for value in record.values()):
                    continue
                yield reader.line_num, {k.strip(): v for k, v in record.items() if k}
            return
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, UnreadableRow(message=f"not valid JSON ({exc.msg})")
                continue
            except RecursionError:
                yield number, UnreadableRow(message="JSON nested too deeply")
                continue
            except ValueError:  # an integer longer than int() converts
                yield number, UnreadableRow(message="a JSON number too long")
                continue
            if not isinstance(record, dict):
                yield number, UnreadableRow(message="not a JSON object")
                continue
            yield number, record
