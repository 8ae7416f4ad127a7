"""The bench's figures: one :class:`Result` per test, size and variant, holding every raw
sample so the JSON keeps them all, and naming the platform that produced it."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    test: str  # "C1".."C14", "S1".."S4"
    what: str  # what was measured, in a few words
    unit: str  # "ms", "us", "%", "bytes", "instructions", "cycles"
    samples: list[float]  # one per run, as measured (never averaged here)
    platform: str  # e.g. "virtual board (unix VM 1.29.0, AMD EPYC 7B13)"
    size: int | None = None  # group size (members), where the test has one
    setup: str | None = None  # system tests: "1x3", "1x25", "2x25", "10x10"
    variant: str | None = None  # e.g. "precomputed"/"cold", "tx"/"rx"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return len(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def max(self) -> float:
        return max(self.samples)

    def key(self) -> tuple[str, int | None, str | None, str | None]:
        return (self.test, self.size, self.setup, self.variant)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.samples:
            d.update(runs=self.runs, min=self.min, median=self.median, max=self.max)
        return d


class BenchAborted(Exception):
    """A test could not finish (a board disconnected, a heap ran out): the message names the
    test; ``results`` holds what was measured before it, to be kept in the JSON."""

    def __init__(self, test: str, message: str, results: list[Result]) -> None:
        super().__init__(f"{test}: {message}")
        self.test = test
        self.results = results


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a test: still a KeyboardInterrupt (nothing may swallow it as a board's
    failure), carrying what was measured before it so that the bench can write it."""

    def __init__(self, results: list[Result]) -> None:
        super().__init__()
        self.results = results


def replace_marked_block(path: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the marker lines ``begin`` and ``end`` of the document at ``path``
    (docs/BENCH.md), which keeps everything else; markers and block are appended when absent."""
    doc = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)
