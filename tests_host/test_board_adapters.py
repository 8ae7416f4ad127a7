"""What every board adapter shares, checked on its source: the surface names are the virtual
board's, and every pin constant is in docs/hardware.md's pin table. Each real board's adapter
runs on models of its port (tests_host/test_port_rp2.py for board/rp2_pico and rp2_pico2,
tests_host/test_port_stm32.py for board/stm32_pybv11), which test its behaviour."""

from __future__ import annotations

import ast

from .conftest import ROOT

DOCUMENTED = ["rp2_pico", "stm32_pybv11"]
# What every adapter offers (docs/ARCHITECTURE.md, board/virtual/__init__.py).
SURFACE = ["NAME", "ADC_RATE_HZ", "CAL_DEFAULT", "led", "relay", "button", "tamper", "adc",
           "han_tx", "rtc", "rtc_get", "rtc_set", "entropy", "wan", "ticks_us", "ticks_diff",
           "sleep_ms"]

def virtual_surface() -> set[str]:
    tree = ast.parse((ROOT / "board" / "virtual" / "__init__.py").read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return {n for n in names if not n.startswith("_")}


def test_surface_list_is_the_virtual_boards() -> None:
    assert set(SURFACE) <= virtual_surface()


def test_pin_maps_are_documented() -> None:
    """Every pin constant of each adapter appears in docs/hardware.md's pin table."""
    doc = (ROOT / "docs" / "hardware.md").read_text()
    for board in DOCUMENTED:
        tree = ast.parse((ROOT / "board" / board / "__init__.py").read_text())
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id.startswith("PIN_")):
                value = node.value
                if isinstance(value, ast.Call):  # const(26)
                    value = value.args[0]
                assert isinstance(value, ast.Constant)
                shown = f"GP{value.value}" if isinstance(value.value, int) else value.value
                assert shown in doc, f"{board}.{node.targets[0].id} = {shown} not in the doc"

