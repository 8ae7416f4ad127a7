"""docs/ARCHITECTURE.md shows THE flow table: it must say exactly what firmware/policy.py says."""

from __future__ import annotations

import re

from .conftest import FIRMWARE, ROOT


def policy_rows() -> set[tuple[str, str, tuple[str, ...]]]:
    ns: dict[str, object] = {}
    exec((FIRMWARE / "policy.py").read_text(), ns)  # plain data: no MicroPython imports
    flows = ns["FLOWS"]
    assert isinstance(flows, dict)
    return {(s, r, tuple(k)) for (s, r), k in flows.items()}


def doc_rows() -> set[tuple[str, str, tuple[str, ...]]]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("### The flow table", 1)[1].split("\n\n", 2)[1]
    rows = set()
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.add((cells[0], cells[1], tuple(re.split(r",\s*", cells[2]))))
    return rows


def test_architecture_doc_shows_the_policy_table() -> None:
    assert doc_rows() == policy_rows()
