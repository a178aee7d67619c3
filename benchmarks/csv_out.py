"""Writing a benchmark's result rows as CSV, one way for every benchmark."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def write_csv(path: str | os.PathLike[str], columns: Sequence[str],
              rows: Iterable[Mapping[str, Any]], *, extra: str = "raise") -> None:
    """`rows` under a header of `columns` (None written as an empty cell); creates the folder.
    A key outside `columns` raises, unless `extra="ignore"`."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction=extra)
        w.writeheader()
        w.writerows(rows)
