"""The Elster AS300's figures from seed 000 (Defend & Kursawe, "Implementation of
Privacy-Friendly Aggregation for the Smart Grid"), Tables 1–4, in the paper's units, as the
numbers ``meterctl bench`` prints ours beside.

Component tests (Tables 1 and 2) were measured on one meter, firmware 8.11.1, 72 MHz, with
millisecond granularity ("the equipment cannot measure time under 1 ms"): C1–C5 for a group
of 3 and of 50 meters, C6 for one meter without LoPA and for 50 meters with it, C7–C14 once.
System tests (Tables 3 and 4) are averages of 10 runs with the EIServer head-end over a serial
line (a Digi PortServer), for 1 group of 3, 1 of 25, 2 of 25 and 10 of 10 meters; S4 reads the
encrypted values of 6 15-minute intervals. ``tests_host/test_bench_report.py`` checks every
figure here against the seed's text.
"""

from __future__ import annotations

from dataclasses import dataclass

PLATFORM = "Elster AS300 (72 MHz, firmware 8.11.1; seed 000 Tables 1–4)"
SETUPS = ("1x3", "1x25", "2x25", "10x10")


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str  # "ms", "%", "bytes"
    table: int  # the seed's table it comes from
    bound: str = ""  # "<" when the paper gives only an upper bound ("<1")
    note: str = ""

    @property
    def text(self) -> str:
        v = f"{self.value:,.6g}" if self.unit != "bytes" else f"{self.value:,.0f}"
        return f"{self.bound}{v} {self.unit}"

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"value": self.value, "unit": self.unit,
                                "source": f"seed 000 Table {self.table}",
                                "platform": PLATFORM}
        if self.bound:
            d["bound"] = self.bound
        if self.note:
            d["note"] = self.note
        return d


# Table 1: average time in ms for a group of 3 and of 50 meters.
C_TIMES: dict[str, dict[int, Figure]] = {
    "C1": {3: Figure(124.9, "ms", 1), 50: Figure(126.875, "ms", 1)},
    "C2": {3: Figure(1, "ms", 1, note="the equipment cannot measure under 1 ms"),
           50: Figure(1, "ms", 1, bound="<", note="given as <1 ms")},
    "C3": {3: Figure(360.8, "ms", 1), 50: Figure(9100, "ms", 1)},
    "C4": {3: Figure(173.8, "ms", 1), 50: Figure(181.232653, "ms", 1)},
    "C5": {3: Figure(5.02381, "ms", 1), 50: Figure(96.708333, "ms", 1)},
}
# Table 1: CPU usage, 1 meter with LoPA disabled and 50 meters with LoPA enabled.
C6_WITHOUT = Figure(30.02, "%", 1, note="1 meter, LoPA disabled")
C6_WITH = Figure(30.11, "%", 1, note="50 meters, LoPA enabled")
# Table 2: memory in bytes (EEPROM, flash ROM, RAM).
C_MEMORY: dict[str, Figure] = {
    "C7": Figure(5062, "bytes", 2, note="LoPA components, EEPROM"),
    "C8": Figure(2920, "bytes", 2, note="encrypted load profile, EEPROM"),
    "C9": Figure(192, "bytes", 2, note="encrypted load profile capture objects, EEPROM"),
    "C10": Figure(183688, "bytes", 2, note="free space, EEPROM"),
    "C11": Figure(246084, "bytes", 2, note="code size without LoPA, flash ROM"),
    "C12": Figure(261692, "bytes", 2, note="code size with LoPA, flash ROM"),
    "C13": Figure(48568, "bytes", 2, note="RAM without LoPA"),
    "C14": Figure(53352, "bytes", 2, note="RAM with LoPA"),
}
# Table 3 (ms, average of 10 runs) and Table 4 (bytes on the wire, average of 10 runs).
_S_MS = {
    "S1": (13588.8360, 33759.3447, 95786.9113, 147946.0895),
    "S2": (13642.5570, 33451.7854, 92019.1679, 148378.2688),
    "S3": (16244.3580, 107500.9829, 317488.8615, 286593.5395),
    "S4": (39025.3141, 93798.9607, 273972.2835, 429223.3581),
}
_S_BYTES = {
    "S1": (60968, 528443, 1058428, 2095841),
    "S2": (75504, 664432, 1259758, 2615719),
    "S3": (84098, 1545730, 3121189, 3752896),
    "S4": (289243, 2518940, 4999469, 10024446),
}
S_TIMES: dict[str, dict[str, Figure]] = {
    t: {s: Figure(v, "ms", 3) for s, v in zip(SETUPS, vals, strict=True)}
    for t, vals in _S_MS.items()}
S_BYTES: dict[str, dict[str, Figure]] = {
    t: {s: Figure(v, "bytes", 4) for s, v in zip(SETUPS, vals, strict=True)}
    for t, vals in _S_BYTES.items()}

# What the paper says beyond the tables (section 3.3 and 4.1), for the capacity line.
MAX_GROUP = 27  # all keys in one 4000-byte message
MAX_GROUPS = 1


def component(test: str, size: int | None, variant: str | None, unit: str) -> Figure | None:
    """The Elster figure for one of our component results (None: the paper has none)."""
    if test in C_TIMES:
        if unit not in ("us", "ms") or size not in C_TIMES[test]:
            return None
        return C_TIMES[test][size]
    if test == "C6" and unit == "%":
        v = (variant or "").lower()
        if v.startswith("without"):
            return C6_WITHOUT
        if v.startswith("with"):
            return C6_WITH
        return None
    if test in C_MEMORY and unit == "bytes":
        return C_MEMORY[test]
    return None


def system(test: str, setup: str | None, unit: str) -> Figure | None:
    """The Elster figure for one of our system results: its time (ms) or bytes."""
    if setup not in SETUPS:
        return None
    if unit == "ms":
        return S_TIMES.get(test, {}).get(setup)
    if unit == "bytes":
        return S_BYTES.get(test, {}).get(setup)
    return None
