"""Mutation testing of the security and integrity checks (``make mutate``, issue 18).

Each entry of the list (``tests_host/mutations.toml``) breaks one check on purpose, minimally,
and names the tests that must then fail. For each mutation the runner copies the tree (the
files git knows, committed or not) to a scratch directory, replaces the entry's snippet there
(it must occur exactly once in the file, or across the files a glob names: otherwise the list
is stale and the run fails before anything runs), and runs only the named tests in that copy
(``pytest -x -q``, with a timeout). The tests find the copy's firmware and host tools by
themselves: ``tests_host/conftest.py`` and the virtual board locate ``firmware/`` from their
own file, and the copy comes first on ``PYTHONPATH``. A mutation is *killed* when a named test
fails, *survived* when they all pass; anything else (a test id that does not exist, a
collection error) is an *error*. The run exits non-zero unless every mutation was killed.
Docs: docs/SECURITY.md, "Mutation testing".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "tests_host" / "mutations.toml"
MAX_JOBS = 2  # the host has 2 cores, shared
TIMEOUT_S = 180.0  # per mutation, all its tests
# never copied into a scratch tree (the fallback walk, when the tree is not a git checkout)
_SKIP = {".git", ".venv", ".sim", "build", "__pycache__", ".pytest_cache", ".mypy_cache",
         ".ruff_cache"}
_KEYS = {"id", "file", "find", "replace", "tests", "why"}
_TAIL = 25  # lines of a failed run's output shown for an error


class ListError(Exception):
    """The mutation list is malformed or stale (a snippet or a test that no longer exists)."""


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str  # a path under the root, or a glob ("firmware/tasks/dc_*.py")
    find: str  # the exact source snippet
    replace: str
    tests: tuple[str, ...]  # pytest node ids, relative to the root
    why: str


@dataclass
class Result:
    mutation: Mutation
    outcome: str  # "killed", "survived" or "error"
    seconds: float
    detail: str = ""  # the failing test (killed), or what went wrong (error)


def load(path: Path = LIST) -> list[Mutation]:
    """The mutations of a list file; ListError if it is malformed."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ListError(f"{path}: {e}") from None
    entries = data.get("mutation")
    if not isinstance(entries, list) or not entries:
        raise ListError(f"{path}: no [[mutation]] entries")
    out: list[Mutation] = []
    seen: set[str] = set()
    for n, ent in enumerate(entries, 1):
        where = f"{path.name}: mutation #{n}"
        if not isinstance(ent, dict):
            raise ListError(f"{where}: not a table")
        name = ent.get("id")
        if isinstance(name, str) and name:
            where = f"{path.name}: mutation {name!r}"
        if set(ent) != _KEYS:
            missing, extra = sorted(_KEYS - set(ent)), sorted(set(ent) - _KEYS)
            raise ListError(f"{where}: keys must be {', '.join(sorted(_KEYS))}"
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unknown {', '.join(extra)}" if extra else ""))
        for k in ("id", "file", "find", "why"):
            if not isinstance(ent[k], str) or not ent[k].strip():
                raise ListError(f"{where}: {k} must be a non-empty string")
        if not isinstance(ent["replace"], str):
            raise ListError(f"{where}: replace must be a string")
        if ent["replace"] == ent["find"]:
            raise ListError(f"{where}: replace is the same as find")
        tests = ent["tests"]
        if (not isinstance(tests, list) or not tests
                or not all(isinstance(t, str) and "::" in t for t in tests)):
            raise ListError(f"{where}: tests must be a non-empty list of pytest node ids "
                            "(file::test)")
        if ent["id"] in seen:
            raise ListError(f"{where}: id used twice")
        seen.add(ent["id"])
        out.append(Mutation(ent["id"], ent["file"], ent["find"], ent["replace"], tuple(tests),
                            ent["why"].strip()))
    return out


def select(mutations: list[Mutation], only: list[str]) -> list[Mutation]:
    """The mutations named in ``only`` (ids, or globs of ids; all when empty)."""
    if not only:
        return mutations
    picked = [m for m in mutations if any(fnmatch.fnmatchcase(m.id, o) for o in only)]
    unknown = [o for o in only if not any(fnmatch.fnmatchcase(m.id, o) for m in mutations)]
    if unknown:
        raise ListError(f"no mutation {', '.join(map(repr, unknown))}; "
                        f"--list shows the {len(mutations)} ids")
    return picked


def target(root: Path, m: Mutation) -> Path:
    """The one file under root whose source holds m's snippet exactly once; ListError (the
    list is stale) otherwise."""
    files = sorted(p for p in root.glob(m.file) if p.is_file())
    if not files:
        raise ListError(f"{m.id}: stale: no file {m.file}")
    hits = [(p, p.read_text().count(m.find)) for p in files]
    total = sum(n for _, n in hits)
    if total != 1:
        where = ", ".join(f"{p.relative_to(root)} x{n}" for p, n in hits if n) or "nowhere"
        raise ListError(f"{m.id}: stale: the snippet must occur exactly once in {m.file}, "
                        f"found {total} ({where}):\n    {m.find.strip()[:200]}")
    return next(p for p, n in hits if n)


def check(root: Path, mutations: list[Mutation], python: str = sys.executable) -> None:
    """Every snippet found exactly once and every named test collected in the tree as it
    is; ListError for the first that is not (nothing has been run)."""
    for m in mutations:
        target(root, m)
    ids = sorted({t for m in mutations for t in m.tests})
    proc = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-p",
                           "no:cacheprovider", *ids], cwd=root, env=_env(root),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                 if "not found" in ln or "error" in ln.lower() or "no collectors" in ln]
        raise ListError("stale: named tests do not collect:\n    "
                        + "\n    ".join(lines[:10] or proc.stdout.splitlines()[-_TAIL:]))


def _files(root: Path) -> list[str]:
    """The tree's files, relative: what git knows, tracked or new but not ignored."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True,
                             timeout=60).stdout
        return [f for f in out.decode().split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.SubprocessError):
        found = []
        for d, dirs, names in os.walk(root):
            dirs[:] = [x for x in dirs if x not in _SKIP and not x.endswith(".egg-info")]
            found += [str(Path(d, x).relative_to(root)) for x in names
                      if not x.endswith(".pyc")]
        return found


def scratch(root: Path, dest: Path) -> None:
    """Copy the tree's files (not .venv, not caches) under dest."""
    for f in _files(root):
        out = dest / f
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / f, out)
        shutil.copymode(root / f, out)


def _env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]]
                                                      if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing cached from a mutated source
    return env


def run_one(root: Path, m: Mutation, timeout: float = TIMEOUT_S,
            python: str = sys.executable) -> Result:
    """Apply m to a scratch copy of root and run its tests there."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutate-{m.id}-", ignore_cleanup_errors=True) as tmp:
        tree = Path(tmp) / "tree"
        scratch(root, tree)
        f = tree / target(root, m).relative_to(root)
        f.write_text(f.read_text().replace(m.find, m.replace, 1))
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "--timeout", str(int(timeout)), *m.tests]
        # its own session: on a timeout the whole group goes (VMs and meters it started too)
        proc = subprocess.Popen(cmd, cwd=tree, env=_env(tree), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out = proc.communicate(timeout=timeout + 30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Result(m, "killed", time.monotonic() - t0,
                          f"timed out after {timeout:g} s (the mutation hangs its tests)")
    dt = time.monotonic() - t0
    if proc.returncode == 0:
        return Result(m, "survived", dt)
    if proc.returncode == 1:
        failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in out.splitlines()
                  if ln.startswith("FAILED ")]
        return Result(m, "killed", dt, failed[0] if failed else "a test failed")
    tail = "\n".join("    " + ln for ln in out.splitlines()[-_TAIL:])
    return Result(m, "error", dt, f"pytest exited with {proc.returncode}:\n{tail}")


def run(root: Path, mutations: list[Mutation], jobs: int = MAX_JOBS,
        timeout: float = TIMEOUT_S,
        say: Callable[[str], None] = print) -> list[Result]:
    """Every mutation, at most ``jobs`` at a time; each result reported as it comes."""
    results: list[Result] = []
    width = max(len(m.id) for m in mutations)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(jobs, MAX_JOBS))) as ex:
        futs = [ex.submit(run_one, root, m, timeout) for m in mutations]
        for fut in concurrent.futures.as_completed(futs):
            r = fut.result()
            results.append(r)
            line = f"{r.outcome:<8} {r.mutation.id:<{width}} {r.seconds:5.1f} s"
            if r.outcome == "killed":
                line += f"  by {r.detail}"
            elif r.outcome == "survived":
                line += f"  {r.mutation.file}: no named test failed ({r.mutation.why})"
            else:
                line += f"  {r.detail}"
            say(line)
    order = {m.id: i for i, m in enumerate(mutations)}
    return sorted(results, key=lambda r: order[r.mutation.id])


def confirm(root: Path, results: list[Result], timeout: float = TIMEOUT_S,
            python: str = sys.executable) -> list[Result]:
    """A kill counts only if its test passes without the mutation: the tests that killed run
    once more on an unmutated copy, and a mutation whose killer fails there too is an error
    (a test broken by something else kills every mutation it is named for)."""
    killers = sorted({r.detail for r in results if r.outcome == "killed" and "::" in r.detail})
    if not killers:
        return results
    why: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mutate-baseline-", ignore_cleanup_errors=True) as tmp:
        tree = Path(tmp) / "tree"
        scratch(root, tree)
        todo = killers
        # A killer that fails here once runs again, alone: one that passes then passes without
        # the mutation (a test starved on a loaded host, as in `make test`, where the suite
        # runs beside this); one that fails twice is broken by something else.
        for _ in range(2):
            cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                   "--timeout", str(int(timeout)), *todo]
            proc = subprocess.run(cmd, cwd=tree, env=_env(tree), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout * 4,
                                  check=False)
            why = {}
            for ln in proc.stdout.splitlines():
                if ln.startswith(("FAILED ", "ERROR ")):
                    test, _, reason = ln.split(" ", 1)[1].partition(" - ")
                    why[test] = reason[:200]
            if proc.returncode not in (0, 1):
                why = {k: why.get(k, f"pytest exited {proc.returncode}") for k in todo}
            todo = sorted(why)
            if not todo:
                break
    return [Result(r.mutation, "error", r.seconds,
                   f"its killer {r.detail} fails without the mutation too: {why[r.detail]}")
            if r.outcome == "killed" and r.detail in why else r for r in results]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m host_tools.mutate",
        description="Break each security check in turn (a scratch copy of the tree) and run "
                    "the tests that must catch it; exit 1 if any mutation survives.")
    p.add_argument("--only", action="append", default=[], metavar="ID",
                   help="run only this mutation (an id or a glob of ids; repeatable, or "
                        "comma-separated)")
    p.add_argument("--list", action="store_true",
                   help="list the mutations (id, file, tests, why) and check that none is "
                        "stale; run nothing")
    p.add_argument("--jobs", type=int, default=MAX_JOBS,
                   help=f"mutations at a time, 1..{MAX_JOBS} (default {MAX_JOBS})")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S,
                   help=f"seconds for one mutation's tests (default {TIMEOUT_S:g})")
    p.add_argument("--file", type=Path, default=LIST, help="the mutation list (TOML)")
    p.add_argument("--root", type=Path, default=ROOT, help="the tree to mutate")
    a = p.parse_args(argv)
    if not 1 <= a.jobs <= MAX_JOBS:
        p.error(f"--jobs must be 1..{MAX_JOBS}")
    if a.timeout <= 0:
        p.error("--timeout must be > 0")
    root = a.root.resolve()
    try:
        only = [o.strip() for x in a.only for o in x.split(",") if o.strip()]
        mutations = select(load(a.file), only)
        check(root, mutations)
    except ListError as e:
        print(f"mutate: {e}", file=sys.stderr)
        return 1
    if a.list:
        for m in mutations:
            print(f"{m.id}\n  file:  {m.file}\n  tests: {', '.join(m.tests)}\n  why:   {m.why}")
        print(f"{len(mutations)} mutations, none stale")
        return 0
    t0 = time.monotonic()
    print(f"mutate: {len(mutations)} mutations, {min(a.jobs, MAX_JOBS)} at a time", flush=True)
    results = run(root, mutations, a.jobs, a.timeout, lambda s: print(s, flush=True))
    print("mutate: the killing tests once more, without any mutation", flush=True)
    results = confirm(root, results, a.timeout)
    wall = time.monotonic() - t0
    by = {k: [r for r in results if r.outcome == k] for k in ("killed", "survived", "error")}
    print(f"mutate: {len(by['killed'])} killed, {len(by['survived'])} survived, "
          f"{len(by['error'])} errors of {len(results)} in {wall:.0f} s "
          f"(mutation time {sum(r.seconds for r in results):.0f} s)")
    for r in by["survived"]:
        print(f"SURVIVED {r.mutation.id}: {r.mutation.file}: {r.mutation.why}", file=sys.stderr)
    for r in by["error"]:
        print(f"ERROR {r.mutation.id}: {r.detail}", file=sys.stderr)
    return 0 if len(by["killed"]) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
