"""The off-switch and HAN part of `make run` (called by host_tools/demo.py).

On one provisioned virtual meter: read three DSMR 5 P1 telegrams from its HAN pty with
dsmr-parser, then a switch cycle as the central system and the household see it: OFF opens
the relay, ON only arms it (the HAN shows "ready for reconnection"), the local button closes
it; a forged command is refused, logged, and moves nothing. Every step reads the relay pin as
the virtual board sees it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from host_tools.headend import switch
from host_tools.headend.client import open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.queries import read_log
from host_tools.sim import relay

# The demo meters' off-switch factory settings: short spacing so that the cycle runs quickly
# (a real meter: 6 an hour, 10 s apart, 120-s arm window).
DEMO_LIMITS = switch.Limits(max_per_hour=60, min_spacing_s=1, arm_window_s=60)
BREAKER = {0: "disconnected", 1: "connected", 2: "ready for reconnection"}
SHORT = {0: "off", 1: "on", 2: "ready"}


def _han_table(tels: list[Any], title: str) -> Table:
    t = Table("UTC", "import T1", "import T2", "tariff", "+P", "-P", "V", "A", "breaker",
              title=title, caption="energy kWh, power kW")
    for x in tels:
        b = getattr(x, "ACTUAL_SWITCH_POSITION", None)
        t.add_row(f"{x.P1_MESSAGE_TIMESTAMP.value:%H:%M:%S}",
                  str(x.ELECTRICITY_USED_TARIFF_1.value), str(x.ELECTRICITY_USED_TARIFF_2.value),
                  str(int(x.ELECTRICITY_ACTIVE_TARIFF.value)),
                  str(x.CURRENT_ELECTRICITY_USAGE.value), str(x.CURRENT_ELECTRICITY_DELIVERY.value),
                  str(x.INSTANTANEOUS_VOLTAGE_L1.value), str(x.INSTANTANEOUS_CURRENT_L1.value),
                  SHORT.get(b.value, str(b.value)) if b is not None else "-")
    return t


def show(index: int, port: str, han: str, base: Path, keystore: Keystore,
         console: Console) -> None:
    console.print(f"[bold]meter {index}: the HAN port {han}, a data diode[/] (DSMR 5.0.2 P1, "
                  "read and checksum-validated by dsmr-parser)")
    raw: list[str] = []
    tels = switch.read_han(han, 3, timeout=10, raw=raw)
    console.print(raw[-1].rstrip(), highlight=False, markup=False)
    console.print(_han_table(tels, "three consecutive telegrams"))

    def pin(what: str) -> None:
        st = relay.relay(index, base)
        console.print(f"  {what:<44} relay pin {st['pin']} ({st['relay']})"
                      f"{', armed' if st['armed'] else ''}{', locked' if st['locked'] else ''}")

    console.print(f"[bold]meter {index}: a switch cycle[/] (commands signed with the "
                  "off-switch's own key; answers signed by the off-switch on core 1)")
    last = 0.0

    def cmd(op: str) -> None:
        nonlocal last
        time.sleep(max(0.0, last + DEMO_LIMITS.min_spacing_s + 0.1 - time.monotonic()))
        with open_link(port, keystore) as link:
            try:
                r = switch.switch(link, op)
                pin(f"meterctl switch {op}: {r.result_name}")
            except switch.SwitchError as e:
                console.print(f"  [yellow]{e}[/]", highlight=False)
            last = time.monotonic()

    pin("now")
    cmd("off")
    cmd("on")
    tel = switch.read_han(han, 1)[0]
    b = getattr(tel, "ACTUAL_SWITCH_POSITION", None)
    console.print(f"  the HAN telegram's breaker state: {BREAKER.get(b.value) if b else '-'}")
    time.sleep(1.0)
    pin("1 s later, nobody pressed the button")
    relay.press(index, "button", base)
    pin("meterctl sim press button")
    e = keystore.get(keystore.find(port).meter_id)
    assert e is not None
    with open_link(port, keystore) as link:
        forged = switch.OsKeys.derive(e.meter_id, e.master)  # the WAN key is not the off-switch's
        r = switch.send_token(link, switch.OsKeys.derive(e.meter_id, e.os_key),
                              switch.command(forged, switch.OP_OFF, e.os_ctr + 100))
        pin(f"a forged OFF (signed with the WAN key): {r.result_name}")
        log = read_log(link, "offswitch")
    console.print("  the off-switch log (last 5):")
    for seq, t, text in log[-5:]:
        console.print(f"    {seq:4d} {time.strftime('%H:%M:%S', time.gmtime(t))} {text}",
                      highlight=False)
