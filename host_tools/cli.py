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
from host_tools.headend.client import LinkError, MeterError
from host_tools.headend.keystore import Keystore, KeystoreError
from host_tools.headend.provision import ProvisionError
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
        except (BoardError, SimError, BuildError, KeystoreError, ProvisionError, LinkError,
                MeterError) as e:
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


# -- head-end: provisioning and the authenticated WAN protocol ---------------------
port_option = click.option("--port", "-p", required=True,
                           help="serial port, a virtual meter's pty, or auto")
keystore_option = click.option("--keystore", type=click.Path(path_type=Path), default=None,
                               help="host keystore (default: $METERCTL_KEYSTORE or "
                                    "~/.config/meterctl/keystore.json)")
meter_option = click.option("--meter", "meter_id", type=int, default=None,
                            help="meter id (default: the one provisioned on --port)")
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")
timeout_option = click.option("--timeout", type=float, default=5.0, show_default=True)


def _request(port: str, keystore: Path | None, meter_id: int | None, timeout: float,
             kind: int, args: dict[str, Any] | None = None) -> Any:
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        return link.request(kind, args)


@main.command()
@port_option
@keystore_option
@click.option("--force", is_flag=True, help="replace keys already on the board")
@click.option("--interval", type=int, default=None,
              help="load-profile interval in seconds (meter default 900; sims use seconds)")
@click.option("--no-time", is_flag=True, help="do not set the meter's clock")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@friendly_errors
def provision(port: str, keystore: Path | None, force: bool, interval: int | None,
              no_time: bool, timeout: float) -> None:
    """Give a flashed meter its identity and WAN keys (kept in the host keystore), set its
    clock. Idempotent; refuses to replace keys without --force."""
    from host_tools.headend.provision import provision as do_provision

    r = do_provision(port, Keystore(keystore), force=force, interval_s=interval,
                     set_time=not no_time, timeout=timeout, say=lambda m: err_console.print(m))
    click.echo(json.dumps(r.to_json()))


READING_ROWS = [("vrms", "Vrms", "V"), ("irms", "Irms", "A"), ("power_w", "P", "W"),
                ("apparent_va", "S", "VA"), ("pf", "PF", ""), ("freq_hz", "f", "Hz"),
                ("energy_import_wh", "import", "Wh"), ("energy_export_wh", "export", "Wh"),
                ("clock", "clock", "s")]


@main.command()
@port_option
@keystore_option
@meter_option
@json_option
@timeout_option
@friendly_errors
def read(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
         timeout: float) -> None:
    """Read the meter's live values over the authenticated WAN protocol."""
    from host_tools.headend import wire

    r = _request(port, keystore, meter_id, timeout, wire.K_READ)
    if as_json:
        click.echo(json.dumps(r))
        return
    t = Table("quantity", "value", "unit", title=f"meter on {port}")
    for key, name, unit in READING_ROWS:
        t.add_row(name, str(r.get(key)), unit)
    iv = r.get("interval", {})
    t.add_row("interval", f"#{iv.get('index')} from {iv.get('start')} ({iv.get('length')} s)", "")
    console.print(t)


@main.command()
@port_option
@keystore_option
@meter_option
@click.option("--log", "log_name", type=click.Choice(["security", "metrology", "offswitch"]),
              default="security", show_default=True)
@click.option("--from", "from_seq", type=int, default=0, help="first record number")
@click.option("--max", "max_n", type=int, default=0, help="at most this many (0: all)")
@json_option
@timeout_option
@friendly_errors
def logs(port: str, keystore: Path | None, meter_id: int | None, log_name: str, from_seq: int,
         max_n: int, as_json: bool, timeout: float) -> None:
    """Read one of the meter's three logs."""
    from host_tools.headend.client import open_link
    from host_tools.headend.queries import read_log

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        recs = read_log(link, log_name, from_seq, max_n or None)
    if as_json:
        click.echo(json.dumps(recs))
        return
    for seq, t, text in recs:
        click.echo(f"{seq:6d} {t:11d} {text}")


@main.command()
@port_option
@keystore_option
@meter_option
@click.option("--from", "from_seq", type=int, default=0, help="first interval record number")
@json_option
@timeout_option
@friendly_errors
def profile(port: str, keystore: Path | None, meter_id: int | None, from_seq: int,
            as_json: bool, timeout: float) -> None:
    """Read the load profile: one record per closed interval."""
    from host_tools.headend.client import open_link
    from host_tools.headend.queries import PROFILE_FIELDS, read_profile

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        recs = read_profile(link, from_seq)
    if as_json:
        click.echo(json.dumps(recs))
        return
    t = Table(*PROFILE_FIELDS, title=f"load profile, meter on {port}")
    for r in recs:
        t.add_row(*(str(r[k]) for k in PROFILE_FIELDS))
    console.print(t)


@main.command()
@port_option
@keystore_option
@meter_option
@click.option("--volts", type=float, required=True, help="true voltage of the reference load")
@click.option("--amps", type=float, required=True, help="true current of the reference load")
@click.option("--pf", type=float, default=1.0, show_default=True, help="true power factor")
@timeout_option
@friendly_errors
def calibrate(port: str, keystore: Path | None, meter_id: int | None, volts: float,
              amps: float, pf: float, timeout: float) -> None:
    """Set the meter's V gain, I gain and phase against a known load (persisted)."""
    from host_tools.headend import wire

    if volts <= 0 or amps <= 0 or not 0 < abs(pf) <= 1:
        raise click.BadParameter("--volts and --amps must be > 0, --pf in (0, 1]")
    r = _request(port, keystore, meter_id, timeout, wire.K_CALIBRATE,
                 {"volts": volts, "amps": amps, "pf": pf})
    click.echo(json.dumps(r))


@main.command()
@port_option
@keystore_option
@meter_option
@timeout_option
@friendly_errors
def stats(port: str, keystore: Path | None, meter_id: int | None, timeout: float) -> None:
    """The kernel's figures: each task's CPU share of the last 1-s tick, worst latencies,
    mailbox drops and policy refusals."""
    from host_tools.headend import wire

    click.echo(json.dumps(_request(port, keystore, meter_id, timeout, wire.K_STATS)))


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
