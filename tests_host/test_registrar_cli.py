"""`meterctl registrar init|policy` (host_tools/registrar.py): the registrar's own file, private
(0600), its policy; bad input is one line on stderr, exit status 1, and the file unchanged."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.cli import main
from host_tools.registrar import DEFAULT_POLICY, Policy, Registrar, RegistrarError


def run(path: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["registrar", *args, "--registrar", str(path)])
    return r.exit_code, r.stdout, r.stderr


def test_init_policy_and_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "reg" / "registrar.json"
    code, out, err = run(f, "policy")
    assert code == 1 and err.count("\n") == 1 and "registrar init" in err and not f.exists()
    code, out, err = run(f, "init", "--min-n", "2")
    assert code == 1 and err.strip() == "error: min group size 2 outside 3..512"
    assert not f.exists()
    code, out, _ = run(f, "init", "--json")
    assert code == 0 and json.loads(out) == DEFAULT_POLICY.to_json()
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    before = f.read_bytes()
    for args, why in [
        (("init",), "a registrar exists already"),
        (("policy", "--epsilon-max", "-1"), "epsilon_max must be > 0"),
        (("policy", "--lambda-min", "nan"), "lambda_min must be > 0"),
        (("policy", "--sensitivity", "0"), "sensitivity must be > 0"),
        (("policy", "--lambda-min", "10"), "would need epsilon 143750, above epsilon_max 4"),
    ]:
        code, out, err = run(f, *args)
        assert code == 1 and err.count("\n") == 1 and why in err, (args, err)
        assert f.read_bytes() == before, args  # nothing changed
    code, out, _ = run(f, "policy", "--min-n", "7", "--json")
    assert code == 0 and json.loads(out)["min_n"] == 7
    assert Registrar(f).policy() == Policy(7, DEFAULT_POLICY.lambda_min,
                                           DEFAULT_POLICY.epsilon_max, DEFAULT_POLICY.sensitivity)


def test_a_registrar_file_others_can_read_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "registrar.json"
    Registrar(f).init()
    os.chmod(f, 0o644)
    with pytest.raises(Exception, match="chmod 600"):
        Registrar(f).policy()


def test_anchor_and_tags_are_bound_to_the_meter_and_the_group(tmp_path: Path) -> None:
    reg = Registrar(tmp_path / "registrar.json")
    reg.init(Policy(3, 1000.0, 1.0, 1000.0))
    members = [(11, bytes([1]) * 32), (12, bytes([2]) * 32), (13, bytes([3]) * 32)]
    for mid, pk in members:
        reg.record(mid, pk)
    a11, a12 = reg.anchor(11), reg.anchor(12)
    assert len(a11) == 46 and a11[:32] != a12[:32] and a11[32:] == a12[32:]
    tags = reg.approve(b"g", 0, 1000.0, members)
    assert len(set(tags.values())) == 3
    assert reg.approve(b"g", 0, 1000.0, list(reversed(members))) == tags  # order: ascending
    assert reg.approve(b"h", 0, 1000.0, members)[11] != tags[11]
    with pytest.raises(RegistrarError, match="appears twice"):
        reg.approve(b"g", 0, 1000.0, [*members, members[0]])
