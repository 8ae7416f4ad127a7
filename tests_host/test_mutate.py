"""`make mutate` (host_tools/mutate.py): the runner on a small tree of its own (killed,
survived, error, a stale list refused before anything runs), the list's own checks, and the
whole list against this tree: every security check broken in turn must be caught by a test
(docs/SECURITY.md, "Mutation testing")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools import mutate

ROOT = Path(__file__).resolve().parent.parent

ENTRY = '''
[[mutation]]
id = "{id}"
file = "{file}"
find = \'\'\'{find}\'\'\'
replace = \'\'\'{replace}\'\'\'
tests = [{tests}]
why = "{why}"
'''


def entry(id: str = "m", file: str = "calc.py", find: str = "x > 0", replace: str = "x >= 0",
          tests: str = '"test_calc.py::test_zero_is_refused"', why: str = "a check") -> str:
    return ENTRY.format(id=id, file=file, find=find, replace=replace, tests=tests, why=why)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tree with one check and one test of it (not a git checkout: the runner copies it by
    walking it)."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "calc.py").write_text("# the check\ndef check(x):\n    return x > 0\n")
    (root / "test_calc.py").write_text(
        "from calc import check\n\n\ndef test_zero_is_refused():\n    assert not check(0)\n"
        "\n\ndef test_one_is_taken():\n    assert check(1)\n")
    return root


def write_list(tmp_path: Path, *entries: str) -> Path:
    p = tmp_path / "mutations.toml"
    p.write_text("".join(entries))
    return p


def test_the_runner_reports_killed_survived_and_error_and_fails_unless_all_are_killed(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lst = write_list(tmp_path, entry("killed"),
                     entry("survived", find="# the check", replace="# no check"),
                     entry("harmless", find="return x", replace="return 1 and x",
                           tests='"test_calc.py::test_one_is_taken"'),
                     entry("broken", find="x > 0", replace="x >"))
    rc = mutate.main(["--file", str(lst), "--root", str(tree)])
    out = capsys.readouterr()
    assert rc == 1
    lines = {ln.split()[1]: ln.split()[0] for ln in out.out.splitlines()
             if ln.split() and ln.split()[0] in ("killed", "survived", "error")}
    assert lines == {"killed": "killed", "survived": "survived", "harmless": "survived",
                     "broken": "error"}
    assert "by test_calc.py::test_zero_is_refused" in out.out
    assert "1 killed, 2 survived, 1 errors of 4" in out.out
    assert "SURVIVED survived: calc.py: a check" in out.err
    assert "ERROR broken: pytest exited with " in out.err  # a collection error is no kill
    # the tree itself is never touched: the mutations ran in copies
    assert (tree / "calc.py").read_text() == "# the check\ndef check(x):\n    return x > 0\n"
    # and --only runs just those, a killed one alone passing
    assert mutate.main(["--file", str(lst), "--root", str(tree), "--only", "kill*"]) == 0


def test_a_kill_by_a_test_that_fails_without_the_mutation_is_an_error(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A test broken by something else "kills" every mutation it is named for: the killers run
    once more on the unmutated tree, and such a kill is reported as an error."""
    (tree / "test_calc.py").write_text(
        (tree / "test_calc.py").read_text() + "\n\ndef test_broken():\n    assert False\n")
    lst = write_list(tmp_path, entry("masked", tests='"test_calc.py::test_broken"'),
                     entry("real"))
    rc = mutate.main(["--file", str(lst), "--root", str(tree)])
    out = capsys.readouterr()
    assert rc == 1
    assert "1 killed, 0 survived, 1 errors of 2" in out.out
    assert "ERROR masked: its killer test_calc.py::test_broken fails without the mutation " \
        "too: assert False" in out.err


def test_a_killer_that_fails_once_without_the_mutation_runs_again_alone(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A killer starved once on a loaded host (the baseline runs beside `make test`'s suite) is
    run again, alone: passing then, it passes without the mutation and the kill stands."""
    mark = tmp_path / "starved-once"
    (tree / "test_calc.py").write_text(
        (tree / "test_calc.py").read_text() + "\n\nimport os\n\n\ndef test_starved_once():\n"
        "    assert not check(0)\n"
        f"    if not os.path.exists({str(mark)!r}):\n"
        f"        open({str(mark)!r}, 'w').close()\n"
        "        raise AssertionError('starved')\n")
    lst = write_list(tmp_path, entry("flaky", tests='"test_calc.py::test_starved_once"'))
    assert mutate.main(["--file", str(lst), "--root", str(tree)]) == 0, capsys.readouterr()
    assert mark.exists()  # it did fail once without the mutation
    assert "1 killed, 0 survived, 0 errors of 1" in capsys.readouterr().out


def test_a_stale_list_stops_the_run_before_anything_runs(
        tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "missing": (entry(find="x < 0"), "found 0"),
        "twice": (entry(find="check"), "found 2"),
        "no file": (entry(file="gone.py"), "no file gone.py"),
        "no test": (entry(tests='"test_calc.py::test_gone"'), "do not collect"),
    }
    for what, (text, why) in cases.items():
        lst = write_list(tmp_path, entry("fine", replace="x >= 1"), text)
        t0 = time.monotonic()
        assert mutate.main(["--file", str(lst), "--root", str(tree)]) == 1, what
        err = capsys.readouterr().err
        assert err.startswith("mutate: ") and "stale" in err and why in err, (what, err)
        assert time.monotonic() - t0 < 30, what  # refused up front, nothing run


@pytest.mark.parametrize(("text", "why"), [
    ("", "no [[mutation]] entries"),
    (entry().replace('why = "a check"\n', ""), "missing why"),
    (entry() + 'extra = 1\n', "unknown extra"),
    (entry(tests=""), "tests must be a non-empty list"),
    (entry(tests='"test_calc.py"'), "tests must be a non-empty list of pytest node ids"),
    (entry(replace="x > 0"), "replace is the same as find"),
    (entry() + entry(), "id used twice"),
    (entry().replace('id = "m"', 'id = ""'), "id must be a non-empty string"),
    ("[[mutation]\n", "mutations.toml"),
])
def test_a_malformed_list_is_refused_in_one_line(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(mutate.ListError, match=why.replace("[", r"\[")):
        mutate.load(write_list(tmp_path, text))


def test_only_and_jobs_are_checked(tree: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    lst = write_list(tmp_path, entry())
    assert mutate.main(["--file", str(lst), "--root", str(tree), "--only", "nope"]) == 1
    assert "no mutation 'nope'" in capsys.readouterr().err
    for bad in (["--jobs", "3"], ["--jobs", "0"], ["--timeout", "0"]):
        with pytest.raises(SystemExit) as e:
            mutate.main(["--file", str(lst), *bad])
        assert e.value.code == 2, bad


def test_the_list_names_a_check_of_each_kind_and_none_is_stale(
        capsys: pytest.CaptureFixture[str]) -> None:
    ms = mutate.load(mutate.LIST)
    ids = {m.id for m in ms}
    # issue 18's list: MACs, counters and their persistence, the flow policy, every RECOVER
    # rule, the off-switch MAC (all 16 bytes) and counter, the checksums, the seal at boot,
    # the log rate limit, the version check, LoPA key refusals, flash's sha256 checks
    for needed in ("wan-mac", "wan-mac-4-of-16", "wan-replay", "wan-down-counter-persisted",
                   "wan-up-counter-persisted", "kernel-flow-policy", "recover-plain-group",
                   "recover-no-ciphertext-sent", "recover-once", "recover-at-most-m",
                   "recover-names-itself", "recover-repeats", "recover-non-member",
                   "offswitch-mac", "offswitch-mac-4-of-16", "offswitch-counter",
                   "offswitch-counter-persisted", "store-checksum-load", "store-checksum-save",
                   "nvrec-checksum", "seal-at-boot", "kernel-log-rate-limit",
                   "version-firmware", "version-host", "lopa-low-order-key",
                   "lopa-duplicate-member", "flash-file-sha256", "flash-romfs-sha256"):
        assert needed in ids, needed
    assert mutate.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert f"{len(ms)} mutations, none stale" in out


@pytest.mark.timeout(900)  # ~1-2 min on 2 shared cores; the suite's 300 s is per test
def test_every_mutation_is_killed() -> None:
    """The whole list against this tree (`make mutate`): no mutation survives. Prints the
    per-mutation lines and the total time (the figure docs/SECURITY.md gives)."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "host_tools.mutate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout, proc.stderr, f"wall {time.monotonic() - t0:.0f} s", sep="\n")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " 0 survived, 0 errors" in proc.stdout
