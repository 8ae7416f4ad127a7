"""meterctl: the command line, thin over the host_tools libraries."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from host_tools.flash.build import BuildError
from host_tools.sim.fleet import SimError
from host_tools.transport.serial import BoardError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)
console = Console()


def friendly_errors(fn: F) -> F:
    """Known failures become one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (BoardError, SimError, BuildError) as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="host_tools", prog_name="meterctl")
def main() -> None:
    """Flash, drive and measure HASM/LoPA smart meters: real boards or virtual ones."""


# -- sim ---------------------------------------------------------------------
dir_option = click.option("--dir", "base", type=click.Path(path_type=Path), default=None,
                          help="fleet directory (default: $METERCTL_SIM_DIR or "
                               "~/.local/state/meterctl/sim)")


@main.group()
def sim() -> None:
    """Virtual meters: the real MicroPython VM behind a pty, like a Pico on USB."""


@sim.command("start")
@click.option("--meters", "-n", type=int, default=1, show_default=True)
@dir_option
@click.option("--heap", default="192K", show_default=True, help="VM heap (a Pico has ~192K)")
@click.option("--seed", type=int, default=1, show_default=True,
              help="fleet seed; each meter's waveform seed derives from it")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--trace", is_flag=True, help="log every byte in each supervisor.log")
@friendly_errors
def sim_start(meters: int, base: Path | None, heap: str, seed: int, timeout: float,
              trace: bool) -> None:
    """Start METERS virtual meters; print one JSON line per meter once all are up."""
    from host_tools.sim import fleet

    with Progress(TextColumn("starting meters"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), console=err_console, transient=True) as prog:
        task = prog.add_task("start", total=meters)
        recs = fleet.start(meters, base, heap=heap, seed=seed, timeout=timeout, trace=trace,
                           progress=lambda done, _n: prog.update(task, completed=done))
    for r in recs:
        click.echo(json.dumps(r))


@sim.command("status")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per meter")
@friendly_errors
def sim_status(base: Path | None, as_json: bool) -> None:
    """Show each meter: its ports, VM state, REPL mode and whether main.py runs."""
    from host_tools.sim import fleet

    sts = fleet.status(base)
    if as_json:
        for st in sts:
            click.echo(json.dumps(st))
        return
    if not sts:
        click.echo(f"no meters in {(base or fleet.default_dir()).resolve()}")
        return
    t = Table("id", "port", "han", "vm", "repl", "main.py", "boots", "relay", box=None)
    for st in sts:
        t.add_row(str(st.get("id")), st.get("port", "-"), st.get("han", "-"), st.get("vm", "?"),
                  st.get("repl", "-"), st.get("files", {}).get("main.py", "-"),
                  str(st.get("boots", "-")), str(st.get("pins", {}).get("relay", "-")))
    console.print(t)


@sim.command("stop")
@dir_option
@friendly_errors
def sim_stop(base: Path | None) -> None:
    """Stop every meter of the fleet (their files are kept)."""
    from host_tools.sim import fleet

    ids = fleet.stop(base)
    click.echo(f"stopped {len(ids)} meter(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))


@sim.command("power-cut")
@click.option("--meter", "-m", type=int, required=True)
@dir_option
@click.option("--off-time", type=float, default=0.2, show_default=True,
              help="seconds without power")
@friendly_errors
def sim_power_cut(meter: int, base: Path | None, off_time: float) -> None:
    """Kill the meter's VM (SIGKILL) and power it up again."""
    from host_tools.sim import fleet

    st = fleet.power_cut(meter, base, off_time)
    click.echo(json.dumps({"id": st["id"], "vm": st["vm"], "power_cuts": st["power_cuts"],
                           "boots": st["boots"]}))


@sim.command("pin")
@click.option("--meter", "-m", type=int, required=True)
@click.argument("name")
@click.argument("value", type=click.IntRange(0, 1), required=False)
@dir_option
@friendly_errors
def sim_pin(meter: int, name: str, value: int | None, base: Path | None) -> None:
    """Read a pin (relay, led, button, tamper), or drive an input pin to VALUE."""
    from host_tools.sim import fleet

    if value is None:
        pins = fleet.meter_status(meter, base)["pins"]
        if name not in pins:
            raise SimError(f"meter {meter} has no pin {name!r} (pins: {', '.join(sorted(pins))})")
        click.echo(pins[name])
        return
    if name not in fleet.INPUT_PINS:
        raise SimError(f"{name!r} is not an input the host can drive "
                       f"(inputs: {', '.join(fleet.INPUT_PINS)})")
    st = fleet.set_inputs(meter, {name: value}, base)
    click.echo(st["pins"][name])


@sim.command("load")
@click.option("--meter", "-m", type=int, required=True)
@dir_option
@click.option("--vrms", type=float, help="mains voltage, V rms")
@click.option("--irms", type=float, help="load current, A rms")
@click.option("--pf", type=float, help="power factor (negative: capacitive)")
@click.option("--freq", "freq_hz", type=float, help="mains frequency, Hz")
@click.option("--h3", type=float, help="voltage 3rd harmonic, fraction of the fundamental")
@click.option("--h5", type=float, help="voltage 5th harmonic")
@click.option("--ih3", type=float, help="current 3rd harmonic")
@click.option("--noise", type=float, help="ADC noise, counts")
@click.option("--export", type=bool, help="energy flows to the grid")
@friendly_errors
def sim_load(meter: int, base: Path | None, **wave: float | None) -> None:
    """Set what the meter's ADC sees (unset values keep their defaults)."""
    from host_tools.sim import fleet

    params = {k: float(v) for k, v in wave.items() if v is not None}
    st = fleet.set_wave(meter, params, base)
    click.echo(json.dumps({"id": st["id"], "wave": st["wave"]}))


# -- flash -------------------------------------------------------------------
@main.command()
@click.option("--port", "-p", required=True, help="serial port, a virtual meter's pty, or auto")
@click.option("--source", is_flag=True, help="copy .py sources instead of compiling to .mpy")
@click.option("--board", "board_name", default=None,
              help="board definition in board/ (default: from the board's sys.platform)")
@click.option("--firmware", "firmware_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="firmware tree (default: the repository's firmware/)")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@friendly_errors
def flash(port: str, source: bool, board_name: str | None, firmware_dir: Path | None,
          timeout: float) -> None:
    """Deploy firmware/ and the board's own files, then soft-reset into main.py."""
    from host_tools.flash.build import FIRMWARE_DIR
    from host_tools.flash.deploy import flash as do_flash

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=err_console, transient=True) as prog:
        task = prog.add_task("connecting", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            prog.update(task, description=stage, completed=done, total=total)

        r = do_flash(port, source=source, board_name=board_name, progress=progress,
                     timeout=timeout, firmware_dir=firmware_dir or FIRMWARE_DIR)
    click.echo(f"{r.port}: {r.board.describe()}")
    click.echo(f"board definition: {r.board_name}; deployed as {r.mode}")
    if not r.written and not r.removed:
        click.echo(f"nothing to transfer: all {len(r.unchanged)} files are up to date")
    else:
        click.echo(f"wrote {len(r.written)} file(s), {r.bytes_sent} bytes; "
                   f"{len(r.unchanged)} unchanged; removed {len(r.removed)} stale")
        for p in r.written:
            click.echo(f"  + {p}")
        for p in r.removed:
            click.echo(f"  - {p}")
    click.echo("soft reset: main.py is starting")


# -- demo (make run) -------------------------------------------------------------
@main.command()
@click.option("--meters", "-n", type=int, default=3, show_default=True)
@dir_option
@click.option("--keep", is_flag=True, help="leave the meters running afterwards")
@friendly_errors
def demo(meters: int, base: Path | None, keep: bool) -> None:
    """The main job on virtual meters (what `make run` shows)."""
    from host_tools.demo import run_demo

    run_demo(meters, base, keep, console)


if __name__ == "__main__":
    main()
