"""The power-cut campaign's own bookkeeping, against a scripted supervisor (no VM): a cut that
comes while the campaign disarms is a cut, not an error."""
from __future__ import annotations

from typing import Any

import pytest

from host_tools.reliability import powercut
from host_tools.sim import fleet


class ScriptedCampaign(powercut.Campaign):
    """A Campaign whose supervisor is a script: the k-th write comes just as it is disarmed."""

    def __init__(self, cut_on_disarm: bool) -> None:  # no meter, no keystore
        self.fig = powercut.Figures()
        self.link = None
        self.power_cuts = 3
        self.pending = None
        self.cut_on_disarm = cut_on_disarm
        self.cuts = 3
        self.requests: list[dict[str, Any]] = []

    def _ctl(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        self.requests.append(req)
        if req["cmd"] == "arm-cut" and req["k"] == 0:
            if self.cut_on_disarm:
                self.cuts += 1  # the write came first: the cut restarted the VM
            raise fleet.SimError("meter-000: the VM restarted before it was armed")
        last = {"op": "write", "path": "/data/nvram.1", "torn": True, "at": 0.0}
        return {"power_cuts": self.cuts, "vm": "on", "write_cut": {"last": last}}

    def _run_op(self, name: str) -> bool:
        return True

    def _wait_up(self, t_cut: float, cuts_before: int) -> None:
        self.power_cuts = self.cuts


def test_a_cut_that_comes_while_disarming_is_counted_as_the_cut(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(powercut, "INTERVAL_S", 0.05)
    c = ScriptedCampaign(cut_on_disarm=True)
    assert c.cut_at_write("interval", 3, torn=True, match="/data/nvram.")
    assert c.fig.cuts_write == 1 and c.fig.cuts_torn == 1 and c.fig.not_reached == 0
    assert c.fig.by_point == {"write nvram.1": 1}
    assert {"cmd": "arm-cut", "k": 0} in c.requests


def test_a_failed_disarm_without_a_cut_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(powercut, "INTERVAL_S", 0.05)
    c = ScriptedCampaign(cut_on_disarm=False)
    with pytest.raises(fleet.SimError, match="restarted"):
        c.cut_at_write("interval", 3, torn=True, match="/data/nvram.")
    assert c.fig.cuts_write == 0
