"""meterctl: the command line, thin over the host_tools libraries."""

from __future__ import annotations

import functools
import json
import math
import sys
import time
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
from host_tools.headend.lopa import LopaError, StateError
from host_tools.headend.provision import ProvisionError
from host_tools.sim.fleet import SimError
from host_tools.transport.serial import BoardError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)
console = Console()


# -- one convention for every command (issue 20, Build 7) ---------------------------------
# Human output by default, --json for scripts; meter ids are strings in JSON (63-bit ids do not
# survive a JSON double: jq rounds them); times are ISO-8601 UTC for people and Unix epoch
# seconds in JSON (the meters keep Unix time on every port: docs/PROTOCOL.md).
def utc(t: float | int | None) -> str:
    """Epoch seconds as ISO-8601 UTC ("2026-12-07T03:55:55Z"); "-" for none."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def _human_value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ", ".join(map(_human_value, v)) or "-"
    return "-" if v is None else str(v)


def kv_lines(d: dict[str, Any], prefix: str = "") -> list[str]:
    """A JSON answer for people: one "key: value" line per leaf, nested keys dotted."""
    out: list[str] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += kv_lines(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}: {_human_value(v)}")
    return out


def emit(obj: Any, as_json: bool, human: Callable[[], None] | None = None) -> None:
    """Print ``obj`` as one JSON line (--json), else for people (``human``, or key: value)."""
    if as_json:
        click.echo(json.dumps(obj))
    elif human is not None:
        human()
    else:
        for line in kv_lines(obj):
            click.echo(line)


def friendly_errors(fn: F) -> F:
    """Known failures become one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (BoardError, SimError, BuildError, KeystoreError, ProvisionError, LinkError,
                MeterError, LopaError, StateError) as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


INTERRUPTED = 130  # a shell's status for a command ended by SIGINT (128 + 2)


class _Meterctl(click.Group):
    """Ctrl-C ends every command with one line and exit status 130 (click's own "Aborted!"
    exits 1, which a script cannot tell from a failure). Commands that keep something on
    Ctrl-C (bench, headend run) save it before the KeyboardInterrupt gets here; the live views
    (watch, mqtt) catch it themselves and exit 0, their way out."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            note = _interrupt_note.get(ctx.invoked_subcommand or "", "")
            err_console.print(f"interrupted (Ctrl-C){note}", highlight=False, soft_wrap=True)
            sys.exit(INTERRUPTED)


# what each command's user may want to know after a Ctrl-C
_interrupt_note = {
    "headend": ": what was done is in the head-end database; run the same command again to "
               "finish",
    "provision": ": run it again (it is idempotent)",
    "flash": ": run it again (files already written are not sent again)",
}


@click.group(cls=_Meterctl)
@click.version_option(package_name="host_tools", prog_name="meterctl")
def main() -> None:
    """Flash, drive and measure HASM/LoPA smart meters: real boards or virtual ones."""


json_option = click.option("--json", "as_json", is_flag=True,
                           help="print JSON (meter ids as strings, times as epoch seconds)")


# -- sim ---------------------------------------------------------------------
dir_option = click.option("--dir", "base", type=click.Path(path_type=Path), default=None,
                          help="fleet directory (default: $METERCTL_SIM_DIR or "
                               "~/.local/state/meterctl/sim)")


def _index_option(fn: F) -> F:
    """``sim`` commands name a meter by its fleet index: --index/-i. ``--meter`` is a 64-bit
    meter id everywhere else, so the old spelling here is refused with the new one."""

    def old(ctx: click.Context, _p: click.Parameter, value: str | None) -> None:
        if value is not None:
            raise click.UsageError(f"--meter is a meter id everywhere else; the fleet index is "
                                   f"--index now: `meterctl sim {ctx.info_name} --index {value}"
                                   "`", ctx)

    fn = click.option("--meter", "-m", "old_meter", default=None, hidden=True, expose_value=False,
                      callback=old, is_eager=True)(fn)
    return click.option("--index", "-i", "meter", type=int, required=True,
                        help="the meter's index in the fleet (0, 1, ...: `sim status`)")(fn)




@main.group()
def sim() -> None:
    """Virtual meters: the real MicroPython VM behind a pty, like a Pico on USB."""


@sim.command("start")
@click.option("--meters", "-n", type=int, default=1, show_default=True)
@dir_option
@click.option("--heap", default=None,
              help="VM heap, e.g. 192K [default: the profile's, the board's GC heap]")
@click.option("--profile", default=None, metavar="NAME",
              help="the official build each meter presents itself as: rp2-pico, rp2-pico2, "
                   "pybv11, pybv11-thread or unix (docs/virtual-board.md, Port profiles) "
                   "[default: the meter's last, else $METER_PROFILE, else unix]")
@click.option("--seed", type=int, default=1, show_default=True,
              help="fleet seed; each meter's waveform seed derives from it")
@click.option("--sd", "sd", default=None, metavar="SIZE",
              help="a pybv11 profile's micro SD card, e.g. 64M; 0: no card [default: 32M]")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--trace", is_flag=True, help="log every byte in each supervisor.log")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON line per meter: id (fleet index), port, han, dir, pid")
@friendly_errors
def sim_start(meters: int, base: Path | None, heap: str | None, profile: str | None, seed: int,
              sd: str | None, timeout: float, trace: bool, as_json: bool) -> None:
    """Start METERS virtual meters; once all are up, print each one's index and ports."""
    from host_tools.sim import fleet, profiles

    if profile is not None and profile not in profiles.PROFILES:
        # a usage error: one line, exit status 2, nothing started
        err_console.print(f"[bold red]error:[/] unknown profile {profile!r}; valid: "
                          f"{', '.join(profiles.names())}", highlight=False, soft_wrap=True)
        sys.exit(2)
    sd_bytes = None
    if sd is not None:
        try:
            sd_bytes = profiles.heap_bytes(sd)
        except ValueError:
            err_console.print(f"[bold red]error:[/] --sd {sd!r}: a size such as 64M or 0",
                              highlight=False, soft_wrap=True)
            sys.exit(2)

    with Progress(TextColumn("starting meters"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), console=err_console, transient=True) as prog:
        task = prog.add_task("start", total=meters)
        recs = fleet.start(meters, base, heap=heap, seed=seed, timeout=timeout, trace=trace,
                           progress=lambda done, _n: prog.update(task, completed=done),
                           profile=profile, sd_bytes=sd_bytes)
    for r in recs:
        if as_json:
            click.echo(json.dumps(r))
        else:
            click.echo(f"meter {r['id']}: port {r['port']}, han {r['han']}, pid {r['pid']}, "
                       f"{r['dir']}")
    if recs and not as_json:
        click.echo(f"for mpremote, give a port by its link ({recs[0]['link']}): on a "
                   "/dev/pts path it waits for good when a sealed meter refuses the REPL")


@sim.command("status")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per meter")
@friendly_errors
def sim_status(base: Path | None, as_json: bool) -> None:
    """Show each meter: its profile, ports, VM state, REPL mode and whether main.py runs."""
    from host_tools.sim import fleet, profiles

    sts = fleet.status(base)
    if as_json:
        for st in sts:
            click.echo(json.dumps(st))
        return
    if not sts:
        click.echo(f"no meters in {(base or fleet.default_dir()).resolve()}")
        return
    from host_tools.sim import flashwear

    t = Table("id", box=None)
    t.add_column("profile", min_width=max(len(n) for n in profiles.names()), no_wrap=True)
    for col in ("port", "han", "vm", "repl", "main.py", "boots", "relay", "erases"):
        t.add_column(col)
    # "VM/firmware": the VM's heap, and what the ROM leaves the firmware free at the REPL (the
    # board's figure as 64-bit objects; "-": no ballast, the unix profile or a given --heap)
    t.add_column("heap", no_wrap=True)
    lives = []
    for st in sts:
        fl = st.get("flash") or {}
        t.add_row(str(st.get("id")), st.get("profile", "-"), st.get("port", "-"),
                  st.get("han", "-"), st.get("vm", "?"),
                  st.get("repl", "-"), st.get("files", {}).get("main.py", "-"),
                  str(st.get("boots", "-")), str(st.get("pins", {}).get("relay", "-")),
                  f"{fl['erases_max']}/{fl['erases_total']}" if "erases_max" in fl else "-",
                  f"{st.get('heap', '-')}/"
                  + (f"{st['free_at_boot'] // 1024}K" if st.get("free_at_boot") else "-"))
        if "erases_max" in fl:
            lives.append(f"meter {st.get('id')}: {flashwear.life_line(fl)}")
        elif "error" in fl:
            lives.append(f"meter {st.get('id')}: {fl['error']}")
    console.print(t)
    for line in lives:
        click.echo(line)


@sim.command("stop")
@dir_option
@friendly_errors
def sim_stop(base: Path | None) -> None:
    """Stop every meter of the fleet (their files are kept)."""
    from host_tools.sim import fleet

    ids = fleet.stop(base)
    click.echo(f"stopped {len(ids)} meter(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))


@sim.command("power-cut")
@_index_option
@dir_option
@click.option("--off-time", type=float, default=0.2, show_default=True,
              help="seconds without power")
@json_option
@friendly_errors
def sim_power_cut(meter: int, base: Path | None, off_time: float, as_json: bool) -> None:
    """Kill the meter's VM (SIGKILL) and power it up again."""
    from host_tools.sim import fleet

    st = fleet.power_cut(meter, base, off_time)
    emit({"id": st["id"], "vm": st["vm"], "power_cuts": st["power_cuts"], "boots": st["boots"]},
         as_json)


@sim.command("pin")
@_index_option
@click.argument("name")
@click.argument("value", type=click.IntRange(0, 1), required=False)
@dir_option
@json_option
@friendly_errors
def sim_pin(meter: int, name: str, value: int | None, base: Path | None, as_json: bool) -> None:
    """Read a pin (relay, led, button, tamper, cover, jumper), or drive an input pin to
    VALUE (cover 1: the terminal cover open; jumper 1: the service jumper fitted)."""
    from host_tools.sim import fleet

    if value is None:
        pins = fleet.meter_status(meter, base)["pins"]
        if name not in pins:
            raise SimError(f"meter {meter} has no pin {name!r} (pins: {', '.join(sorted(pins))})")
        click.echo(json.dumps({name: pins[name]}) if as_json else pins[name])
        return
    if name not in fleet.INPUT_PINS:
        raise SimError(f"{name!r} is not an input the host can drive "
                       f"(inputs: {', '.join(fleet.INPUT_PINS)})")
    st = fleet.set_inputs(meter, {name: value}, base)
    click.echo(json.dumps({name: st["pins"][name]}) if as_json else st["pins"][name])


@sim.command("load")
@_index_option
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
@json_option
@friendly_errors
def sim_load(meter: int, base: Path | None, as_json: bool, **wave: float | None) -> None:
    """Set what the meter's ADC sees (unset values keep their defaults)."""
    from host_tools.sim import fleet

    params = {k: float(v) for k, v in wave.items() if v is not None}
    st = fleet.set_wave(meter, params, base)
    emit({"id": st["id"], "wave": st["wave"]}, as_json)


# -- flash -------------------------------------------------------------------
@main.command()
@click.option("--port", "-p", required=True, help="serial port, a virtual meter's pty, or auto")
@click.option("--source", is_flag=True, help="copy .py sources instead of compiling to .mpy")
@click.option("--board", "board_name", default=None,
              help="board definition in board/ (default: from the board's sys.platform)")
@click.option("--firmware", "firmware_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="firmware tree (default: the repository's firmware/)")
@click.option("--no-romfs", is_flag=True,
              help="keep the modules on the filesystem even if the board has a ROMFS partition")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@friendly_errors
def flash(port: str, source: bool, board_name: str | None, firmware_dir: Path | None,
          no_romfs: bool, timeout: float) -> None:
    """Deploy firmware/ and the board's own files, then soft-reset into main.py. Compiled
    modules go into the board's ROMFS partition when it has one (run in place, outside the
    heap), else onto its filesystem."""
    from host_tools.flash.build import FIRMWARE_DIR
    from host_tools.flash.deploy import flash as do_flash

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=err_console, transient=True) as prog:
        task = prog.add_task("connecting", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            prog.update(task, description=stage, completed=done, total=total)

        r = do_flash(port, source=source, board_name=board_name, progress=progress,
                     timeout=timeout, firmware_dir=firmware_dir or FIRMWARE_DIR,
                     romfs=not no_romfs)
    click.echo(f"{r.port}: {r.board.describe()}")
    click.echo(f"board definition: {r.board_name}; deployed as {r.mode}")
    for note in r.notes:
        if "ROMFS" in note:
            click.echo(note)
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
@json_option
@friendly_errors
def provision(port: str, keystore: Path | None, force: bool, interval: int | None,
              no_time: bool, timeout: float, as_json: bool) -> None:
    """Give a flashed meter its identity and WAN keys (kept in the host keystore), set its
    clock. Idempotent; refuses to replace keys without --force."""
    from host_tools.headend.provision import provision as do_provision

    r = do_provision(port, Keystore(keystore), force=force, interval_s=interval,
                     set_time=not no_time, timeout=timeout, say=lambda m: err_console.print(m))
    emit(r.to_json(), as_json, lambda: click.echo(
        f"meter {r.meter_id} on {r.port}: {'new key installed' if r.new_key else 'key kept'}"
        + (f"; clock set to {utc(r.clock)}" if r.clock else "")
        + (f"; load-profile interval {r.interval_s} s" if r.interval_s else "")))


READING_ROWS = [("vrms", "Vrms", "V"), ("irms", "Irms", "A"), ("power_w", "P", "W"),
                ("apparent_va", "S", "VA"), ("pf", "PF", ""), ("freq_hz", "f", "Hz"),
                ("energy_import_wh", "import", "Wh"), ("energy_export_wh", "export", "Wh"),
                ("clock", "clock", "UTC")]


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
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        r = link.request(wire.K_READ)
        the_id = link.entry.meter_id
    if as_json:
        click.echo(json.dumps({"meter": str(the_id), "port": port, **r}))
        return
    t = Table("quantity", "value", "unit", title=f"meter {the_id} on {port}")
    for key, name, unit in READING_ROWS:
        t.add_row(name, utc(r.get(key)) if key == "clock" else str(r.get(key)), unit)
    iv = r.get("interval", {})
    t.add_row("interval", f"#{iv.get('index')} from {utc(iv.get('start'))} "
              f"({iv.get('length')} s)", "")
    console.print(t)


@main.command()
@port_option
@keystore_option
@meter_option
@click.option("--log", "log_name", type=click.Choice(["security", "metrology", "offswitch"]),
              default="security", show_default=True)
@click.option("--from", "from_seq", type=int, default=0, help="first record number")
@click.option("--max", "max_n", type=int, default=0, help="at most this many (0: all)")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="also write the records to this CSV file")
@json_option
@timeout_option
@friendly_errors
def logs(port: str, keystore: Path | None, meter_id: int | None, log_name: str, from_seq: int,
         max_n: int, csv_path: Path | None, as_json: bool, timeout: float) -> None:
    """Read one of the meter's three logs."""
    from host_tools.headend.client import open_link
    from host_tools.headend.queries import read_log

    _check_outputs(csv_path)
    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        recs = read_log(link, log_name, from_seq, max_n or None)
    if csv_path is not None:
        from host_tools.export import write_logs_csv

        n = write_logs_csv(recs, csv_path)
        err_console.print(f"{n} record(s) written to {csv_path}", highlight=False)
    if as_json:
        click.echo(json.dumps(recs))
        return
    for seq, t, text in recs:
        click.echo(f"{seq:6d} {utc(t)} {text}")


@main.command()
@port_option
@keystore_option
@meter_option
@click.option("--from", "from_seq", type=int, default=0, help="first interval record number")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="also write the intervals to this CSV file (UTC and epoch times, mWh, kWh)")
@click.option("--png", "png_path", type=click.Path(path_type=Path), default=None,
              help="also draw import/export per interval to this PNG file")
@json_option
@timeout_option
@friendly_errors
def profile(port: str, keystore: Path | None, meter_id: int | None, from_seq: int,
            csv_path: Path | None, png_path: Path | None, as_json: bool,
            timeout: float) -> None:
    """Read the load profile: one record per closed interval (under the supplier's key; the
    meter refuses it unless the household has given its consent: the button held 3 s from
    power-up)."""
    from host_tools.headend.client import open_link
    from host_tools.headend.queries import PROFILE_FIELDS, read_profile

    _check_outputs(csv_path, png_path)
    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        recs = read_profile(link, from_seq)
        the_id = link.entry.meter_id
    if csv_path is not None or png_path is not None:
        from host_tools.export import write_profile_csv, write_profile_png

        if csv_path is not None:
            n = write_profile_csv(recs, csv_path)
            err_console.print(f"{n} interval(s) written to {csv_path}", highlight=False)
        if png_path is not None:
            write_profile_png(recs, png_path, the_id)
            err_console.print(f"chart of {len(recs)} interval(s) written to {png_path}",
                              highlight=False)
    if as_json:
        click.echo(json.dumps(recs))
        return
    t = Table(*PROFILE_FIELDS, title=f"load profile, meter {the_id} on {port}")
    for r in recs:
        t.add_row(*(utc(r[k]) if k == "t_end" else str(r[k]) for k in PROFILE_FIELDS))
    console.print(t)


# -- calibration (docs/calibration.md; the library: host_tools/headend/calibration.py) ------
@main.group(invoke_without_command=True)
@click.option("--volts", type=float, default=None, hidden=True)
@click.option("--amps", type=float, default=None, hidden=True)
@click.option("--pf", type=float, default=None, hidden=True)
@click.pass_context
def calibrate(ctx: click.Context, volts: float | None, amps: float | None,
              pf: float | None) -> None:
    """Calibrate against a reference meter, one quantity at a time (docs/calibration.md):
    voltage, current and power on a resistive load, then phase on a reactive one.
    show, reset and undo the calibration."""
    if volts is not None or amps is not None or pf is not None:
        # the old one-shot form moved the phase on every PF-1 run (issue 20): refused
        raise click.UsageError("the one-shot form is gone: run `calibrate voltage --volts V`,"
                               " `calibrate current --amps A`, `calibrate power --watts W"
                               " --pf PF` (docs/calibration.md)")
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(2)


def _cal_options(fn: F) -> F:
    for opt in (friendly_errors, timeout_option, json_option, meter_option, keystore_option,
                port_option):
        fn = opt(fn)
    return fn


_seconds_option = click.option("--seconds", type=click.IntRange(1, 600), default=10,
                               show_default=True,
                               help="seconds of the meter's readings averaged, before and after")
_force_option = click.option("--force", is_flag=True,
                             help="set a gain more than 30 % from the board's default")


def _cal_show_line(c: dict[str, Any]) -> str:
    prev = "none" if c["previous"] is None else (
        f"{c['previous'][0]:.6g} V/count, {c['previous'][1]:.6g} A/count, "
        f"{c['previous'][2]:+.4f} samples")
    d = c["default"]
    return (f"voltage gain {c['v_gain']:.6g} V/count ({c['v_gain'] / d[0] * 100 - 100:+.2f} %"
            f" from the board's default)\n"
            f"current gain {c['i_gain']:.6g} A/count ({c['i_gain'] / d[1] * 100 - 100:+.2f} %"
            f" from the board's default)\n"
            f"phase        {c['phase']:+.4f} sample periods (at {c['rate_hz']} Hz sampling)\n"
            f"source       {c['source']} (the last change; undo restores: {prev})")


def _cal_run(port: str, keystore: Path | None, meter_id: int | None, timeout: float,
             fn: Callable[[Any], Any]) -> Any:
    from host_tools.headend.calibration import CalibrationError
    from host_tools.headend.client import open_link

    try:
        with open_link(port, Keystore(keystore), meter_id, timeout) as link:
            return fn(link)
    except CalibrationError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)


def _cal_print(r: Any, as_json: bool) -> None:
    from host_tools.headend.calibration import StepResult

    if isinstance(r, StepResult):
        if as_json:
            click.echo(json.dumps({"step": r.step, "true": r.true, "unit": r.unit,
                                   "error_before_pct": r.error_before_pct,
                                   "error_after_pct": r.error_after_pct,
                                   "seconds": r.after.seconds, "calibration": r.cal}))
            return
        m0 = {"voltage": r.before.vrms, "current": r.before.irms, "power": r.before.power_w,
              "phase": r.before.pf}[r.step]
        m1 = {"voltage": r.after.vrms, "current": r.after.irms, "power": r.after.power_w,
              "phase": r.after.pf}[r.step]
        click.echo(f"{r.step}: reference {r.true:g} {r.unit}; meter read {m0:.4g} {r.unit}"
                   f" (error {r.error_before_pct:+.2f} %), now {m1:.4g} {r.unit}"
                   f" (error {r.error_after_pct:+.2f} %), each over {r.after.seconds} s")
        click.echo(_cal_show_line(r.cal))
        return
    click.echo(json.dumps(r) if as_json else _cal_show_line(r))


@calibrate.command("show")
@_cal_options
def calibrate_show(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
                   timeout: float) -> None:
    """The gains (V and A per ADC count), the phase (sample periods) and their source."""
    from host_tools.headend import calibration

    _cal_print(_cal_run(port, keystore, meter_id, timeout, calibration.show), as_json)


@calibrate.command("reset")
@_cal_options
def calibrate_reset(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
                    timeout: float) -> None:
    """Back to the board's default calibration (undo brings the last one back)."""
    from host_tools.headend import calibration

    _cal_print(_cal_run(port, keystore, meter_id, timeout, calibration.reset), as_json)


@calibrate.command("undo")
@_cal_options
def calibrate_undo(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
                   timeout: float) -> None:
    """Restore the calibration before the last change (the meter keeps one)."""
    from host_tools.headend import calibration

    _cal_print(_cal_run(port, keystore, meter_id, timeout, calibration.undo), as_json)


def _cal_step_cmd(name: str, true: float, pf: float, seconds: int, force: bool, port: str,
                  keystore: Path | None, meter_id: int | None, as_json: bool,
                  timeout: float) -> None:
    from host_tools.headend import calibration

    # bad input is refused before the port is opened
    bad = (f"the reference's {calibration.UNITS.get(name, 'PF')} must be > 0, not {true:g}"
           if not (math.isfinite(true) and true > 0) else
           f"--pf must be in (0, 1], not {pf:g}" if not 0 < abs(pf) <= 1 else "")
    if bad:
        err_console.print(f"[bold red]error:[/] {bad}: nothing changed", highlight=False,
                          soft_wrap=True)
        sys.exit(1)
    r = _cal_run(port, keystore, meter_id, max(timeout, 5.0),
                 lambda link: calibration.step(link, name, true, pf, seconds, force))
    _cal_print(r, as_json)


@calibrate.command("voltage")
@click.option("--volts", type=float, required=True,
              help="the reference meter's voltage, V rms")
@_seconds_option
@_force_option
@_cal_options
def calibrate_voltage(volts: float, seconds: int, force: bool, port: str,
                      keystore: Path | None, meter_id: int | None, as_json: bool,
                      timeout: float) -> None:
    """Set the voltage gain: the reference's volts (V rms) against the meter's average."""
    _cal_step_cmd("voltage", volts, 1.0, seconds, force, port, keystore, meter_id, as_json,
                  timeout)


@calibrate.command("current")
@click.option("--amps", type=float, required=True,
              help="the reference meter's current, A rms (not mA)")
@_seconds_option
@_force_option
@_cal_options
def calibrate_current(amps: float, seconds: int, force: bool, port: str,
                      keystore: Path | None, meter_id: int | None, as_json: bool,
                      timeout: float) -> None:
    """Set the current gain: the reference's amps (A rms) against the meter's average."""
    _cal_step_cmd("current", amps, 1.0, seconds, force, port, keystore, meter_id, as_json,
                  timeout)


@calibrate.command("power")
@click.option("--watts", type=float, required=True,
              help="the reference meter's active power, W")
@click.option("--pf", type=float, default=1.0, show_default=True,
              help="the reference's power factor; above 0.9 the power sets the current gain,"
                   " at or below it the phase")
@_seconds_option
@_force_option
@_cal_options
def calibrate_power(watts: float, pf: float, seconds: int, force: bool, port: str,
                    keystore: Path | None, meter_id: int | None, as_json: bool,
                    timeout: float) -> None:
    """Match the meter's power (W) to the reference's: on a resistive load (|PF| > 0.9)
    through the current gain, the phase untouched; on a reactive one through the phase."""
    _cal_step_cmd("power", watts, pf, seconds, force, port, keystore, meter_id, as_json,
                  timeout)


@calibrate.command("phase")
@click.option("--pf", type=float, required=True,
              help="the reference meter's power factor of a reactive load (|PF| <= 0.9)")
@_seconds_option
@_cal_options
def calibrate_phase(pf: float, seconds: int, port: str, keystore: Path | None,
                    meter_id: int | None, as_json: bool, timeout: float) -> None:
    """Set the phase (sample periods) on a reactive load: refused near PF 1, where the
    phase error cannot be told."""
    _cal_step_cmd("phase", pf, pf, seconds, False, port, keystore, meter_id, as_json, timeout)


@main.command()
@port_option
@keystore_option
@meter_option
@json_option
@timeout_option
@friendly_errors
def stats(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
          timeout: float) -> None:
    """The kernel's figures: each task's CPU share of the last 1-s tick, worst latencies,
    mailbox drops, policy refusals and the log records a flood's rate limit dropped."""
    from host_tools.headend import wire

    emit(_request(port, keystore, meter_id, timeout, wire.K_STATS), as_json)


# -- sealing (docs/SECURITY.md "Sealed meters") ------------------------------------------
@main.command("seal")
@port_option
@keystore_option
@meter_option
@json_option
@timeout_option
@friendly_errors
def seal_cmd(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
             timeout: float) -> None:
    """Seal a provisioned meter: Ctrl-C off and the REPL closed for good (persisted), so no
    client (mpremote, flash) gets in over the wire. Undo with `meterctl unseal`."""
    from host_tools.headend import seal
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        r = seal.seal(link)
    emit(r, as_json, lambda: click.echo(
        f"{port}: meter {'sealed' if r.get('sealed') else 'unsealed'}"))


@main.command("unseal")
@port_option
@keystore_option
@meter_option
@json_option
@timeout_option
@friendly_errors
def unseal_cmd(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
               timeout: float) -> None:
    """Unseal a meter (an authenticated maintenance command): its REPL answers Ctrl-C again.
    On site, the service input behind the terminal cover (cover open, jumper fitted) at
    power-up does the same; the household's button never does."""
    from host_tools.headend import seal
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        r = seal.unseal(link)
    emit(r, as_json, lambda: click.echo(
        f"{port}: meter {'sealed' if r.get('sealed') else 'unsealed'}"))


# -- headend: LoPA key set-up and aggregation rounds (S1-S4) ---------------------------
def _headend_options(fn: F) -> F:
    opts = [
        click.option("--ports", default=None, help="serial ports, comma-separated: a,b,c"),
        click.option("--dir", "base", type=click.Path(path_type=Path), default=None,
                     help="all meters of a virtual fleet (its keystore.json and headend.db "
                          "become the defaults)"),
        keystore_option,
        click.option("--db", type=click.Path(path_type=Path), default=None,
                     help="head-end database (default: $METERCTL_HEADEND_DB or "
                          "~/.local/state/meterctl/headend.db)"),
        json_option,
        click.option("--timeout", type=float, default=5.0, show_default=True,
                     help="seconds to wait for each answer"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _headend_run(base_ports: str | None, base: Path | None, keystore: Path | None,
                 db: Path | None, timeout: float, work: Callable[..., Any],
                 need_ports: bool = True) -> tuple[Any, Callable[[], None]]:
    """Open the session, database and head-end; run ``work(he, sess, targets)`` under a
    progress bar. Returns its result and a function printing the S-test figures (stderr)."""
    from host_tools.headend.lopa import HeadEnd, State, serial_connector
    from host_tools.headend.lopa.report import figures_table
    from host_tools.headend.lopa.session import session

    sess = session(base_ports, base, keystore, db)
    targets = sess.targets() if need_ports or sess.ports else None
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), console=err_console,
                  transient=True) as prog, State(sess.db) as state:
        task = prog.add_task("head-end", total=None)

        def progress(what: str, done: int, total: int) -> None:
            prog.update(task, description=what, completed=done, total=total)

        with HeadEnd(state, serial_connector(sess.keystore), timeout=timeout,
                     say=lambda m: err_console.print(m, highlight=False),
                     progress=progress) as he:
            res = work(he, sess, targets)

    def figures() -> None:
        err_console.print(figures_table([res.op.summary()], sess.platform(targets or [])))
        err_console.print(f"head-end database: {sess.db}", highlight=False)

    return res, figures


def _headend_done(res: Any, figures: Callable[[], None], as_json: bool, title: str) -> None:
    from host_tools.headend.lopa.report import outcomes_table

    if as_json:
        click.echo(json.dumps(res.to_json()))
    else:
        console.print(outcomes_table(res, title))
    figures()
    if res.note:
        err_console.print(res.note, highlight=False)
    for o in res.failed:
        err_console.print(f"[bold red]error:[/] {o.target.name}: {o.error}", highlight=False,
                          soft_wrap=True)
    if res.failed:
        sys.exit(1)


@main.group()
def headend() -> None:
    """LoPA head-end (EIServer's part in the paper): key pairs (S1), public keys (S2), group
    keys (S3) and aggregation rounds (S4) over many meters at once. Its state lives in SQLite
    (--db); a second run resumes where a killed one stopped."""


@headend.command("keys")
@_headend_options
@click.option("--replace", is_flag=True, help="make new key pairs even where one exists")
@friendly_errors
def headend_keys(ports: str | None, base: Path | None, keystore: Path | None, db: Path | None,
                 as_json: bool, timeout: float, replace: bool) -> None:
    """S1: create each meter's X25519 key pair (on the meter) and store its public key."""
    res, figures = _headend_run(ports, base, keystore, db, timeout,
                                lambda he, _s, targets: he.keys(targets, replace=replace))
    _headend_done(res, figures, as_json, "S1: key pairs")


@headend.command("pubkeys")
@_headend_options
@friendly_errors
def headend_pubkeys(ports: str | None, base: Path | None, keystore: Path | None,
                    db: Path | None, as_json: bool, timeout: float) -> None:
    """S2: read each meter's public key and store it."""
    res, figures = _headend_run(ports, base, keystore, db, timeout,
                                lambda he, _s, targets: he.pubkeys(targets))
    _headend_done(res, figures, as_json, "S2: public keys")


registrar_option = click.option(
    "--registrar", type=click.Path(path_type=Path), default=None,
    help="the neutral registrar's file (default: $METERCTL_REGISTRAR or "
         "~/.config/meterctl/registrar.json)")


def _registrar_approval(path: Path) -> Callable[..., dict[int, bytes]]:
    """The registrar's approval of a group, its refusals as one-line head-end errors."""
    from host_tools.headend.lopa import LopaError as _LopaError
    from host_tools.registrar import Registrar, RegistrarError

    reg = Registrar(path)

    def approve(gid: bytes, m: int, lam: float,
                members: list[tuple[int, bytes]]) -> dict[int, bytes]:
        try:
            return reg.approve(gid, m, lam, members)
        except RegistrarError as e:
            raise _LopaError(f"the registrar refuses the group: {e}") from None

    return approve


@headend.group("group")
def headend_group() -> None:
    """LoPA groups."""


@headend_group.command("create")
@_headend_options
@click.option("--gid", required=True, help="group id: text, or 0x + hex (1..16 bytes)")
@click.option("--robust", "m", type=int, default=0, show_default=True,
              help="M: most members that may fail to report (DREAM recovery); 0: plain")
@click.option("--noise", "lam", type=float, default=0.0, show_default=True,
              help="lambda of the distributed Laplace noise; 0: none")
@click.option("--force", is_flag=True, help="set the group up again even if it is ready")
@registrar_option
@friendly_errors
def headend_group_create(ports: str | None, base: Path | None, keystore: Path | None,
                         db: Path | None, as_json: bool, timeout: float, gid: str, m: int,
                         lam: float, force: bool, registrar: Path | None) -> None:
    """S3: give every member the ids and public keys of all members (chunks of 25) and commit
    the group on each; resumes an interrupted set-up. With --registrar, the registrar approves
    the group first (meters with its anchor commit no group without its tags)."""
    from host_tools.headend.lopa import parse_gid

    g = parse_gid(gid)
    approve = _registrar_approval(registrar) if registrar is not None else None
    res, figures = _headend_run(
        ports, base, keystore, db, timeout,
        lambda he, _s, targets: he.group_create(g, targets, m, lam, force, approve))
    _headend_done(res, figures, as_json, f"S3: group {gid}")


@headend.command("run")
@_headend_options
@click.option("--gid", required=True,
              help="group id: text, or 0x + hex; several, comma-separated, run in one pass")
@click.option("--rounds", type=int, default=1, show_default=True)
@click.option("--lab", is_flag=True,
              help="afterwards read each meter's plaintexts with a lab probe (lab truth) and "
                   "compare: a virtual meter's flash, read as the firmware runs on; a board "
                   "through its REPL, which restarts its firmware")
@friendly_errors
def headend_run(ports: str | None, base: Path | None, keystore: Path | None, db: Path | None,
                as_json: bool, timeout: float, gid: str, rounds: int, lab: bool) -> None:
    """S4: for each of ROUNDS load-profile intervals, read every member's ciphertext, run the
    recovery round when members are missing (robust groups) and print the aggregate. A
    member without a port (--ports/--dir) counts as not reporting."""
    from host_tools.headend.lopa import parse_gid
    from host_tools.headend.lopa.lab import serial_probe
    from host_tools.headend.lopa.report import rounds_table

    if rounds < 1:
        raise click.BadParameter("--rounds must be at least 1")
    if "," in gid:  # several groups in one pass
        _headend_run_many(ports, base, keystore, db, as_json, timeout, gid, rounds, lab)
        return
    g = parse_gid(gid)
    res, figures = _headend_run(
        ports, base, keystore, db, timeout,
        lambda he, s, targets: he.run(
            g, rounds, targets,
            serial_probe(fleets=[base], keystore=s.keystore) if lab else None),
        need_ports=False)
    if as_json:
        for r in res.rounds:
            click.echo(json.dumps(r.to_json()))
    else:
        console.print(rounds_table(res))
    figures()
    for i, why in sorted(res.lab_errors.items()):
        err_console.print(f"[yellow]lab probe, meter {i}:[/] {why}", highlight=False)
    failed = [r for r in res.rounds if not r.ok]
    for r in failed:
        err_console.print(f"[bold red]error:[/] {r.error}", highlight=False, soft_wrap=True)
    if failed:
        sys.exit(1)


# -- registrar ---------------------------------------------------------------------
def registrar_errors(fn: F) -> F:
    """The registrar's refusals (and the board's) become one line on stderr and exit 1."""
    from host_tools.registrar import RegistrarError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RegistrarError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return friendly_errors(wrapper)  # type: ignore[return-value]


@main.group()
def registrar() -> None:
    """The neutral registrar: certifies meters' LoPA keys and sets the group policy (its own
    secret and file, apart from the head-end's keystore)."""


def _policy_options(fn: F) -> F:
    fn = click.option("--sensitivity", type=float, default=None,
                      help="the most one household's interval value can move (mWh)")(fn)
    fn = click.option("--epsilon-max", type=float, default=None,
                      help="privacy budget per interval over all of a meter's groups")(fn)
    fn = click.option("--lambda-min", type=float, default=None,
                      help="least Laplace noise scale of any aggregate (mWh)")(fn)
    fn = click.option("--min-n", type=int, default=None, help="least members of a group")(fn)
    return fn


def _policy_of(base: Any, min_n: int | None, lambda_min: float | None,
               epsilon_max: float | None, sensitivity: float | None) -> Any:
    from host_tools.registrar import Policy

    return Policy(base.min_n if min_n is None else min_n,
                  base.lambda_min if lambda_min is None else lambda_min,
                  base.epsilon_max if epsilon_max is None else epsilon_max,
                  base.sensitivity if sensitivity is None else sensitivity)


def _policy_echo(p: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(p.to_json()))
    else:
        click.echo(f"min group size {p.min_n}, lambda_min {p.lambda_min:g} mWh, "
                   f"epsilon_max {p.epsilon_max:g} per interval, sensitivity "
                   f"{p.sensitivity:g} mWh")


@registrar.command("init")
@registrar_option
@_policy_options
@json_option
@registrar_errors
def registrar_init(registrar: Path | None, min_n: int | None, lambda_min: float | None,
                   epsilon_max: float | None, sensitivity: float | None,
                   as_json: bool) -> None:
    """Make the registrar's secret and policy (refused if one exists: it anchors meters)."""
    from host_tools.registrar import DEFAULT_POLICY, Registrar

    p = Registrar(registrar).init(_policy_of(DEFAULT_POLICY, min_n, lambda_min, epsilon_max,
                                             sensitivity))
    _policy_echo(p, as_json)


@registrar.command("policy")
@registrar_option
@_policy_options
@json_option
@registrar_errors
def registrar_policy(registrar: Path | None, min_n: int | None, lambda_min: float | None,
                     epsilon_max: float | None, sensitivity: float | None,
                     as_json: bool) -> None:
    """Show the group policy; with options, change it (meters get it when registered)."""
    from host_tools.registrar import Registrar

    reg = Registrar(registrar)
    p = reg.policy()
    if (min_n, lambda_min, epsilon_max, sensitivity) != (None, None, None, None):
        p = reg.policy(_policy_of(p, min_n, lambda_min, epsilon_max, sensitivity))
    _policy_echo(p, as_json)


@registrar.command("register")
@port_option
@registrar_option
@click.option("--timeout", type=float, default=10.0, show_default=True)
@json_option
@registrar_errors
def registrar_register(port: str, registrar: Path | None, timeout: float,
                       as_json: bool) -> None:
    """Certify a provisioned meter's LoPA public key (read over the REPL, a factory step) and
    install the registrar's anchor and policy on it."""
    from host_tools.registrar import Registrar, register

    mid, pk = register(port, Registrar(registrar), timeout)
    if as_json:
        click.echo(json.dumps({"meter": mid, "pk": pk.hex()}))
    else:
        click.echo(f"meter {mid}: LoPA key {pk.hex()[:16]}... registered, anchor installed")


def _headend_run_many(ports: str | None, base: Path | None, keystore: Path | None,
                      db: Path | None, as_json: bool, timeout: float, gids: str, rounds: int,
                      lab: bool) -> None:
    """`headend run --gid g1,g2,...`: the groups' rounds in one pass per interval; a group
    that fails is reported and the others go on; exit 1 if any group or round failed."""
    from host_tools.headend.lopa import gid_text, parse_gid
    from host_tools.headend.lopa.lab import serial_probe
    from host_tools.headend.lopa.report import figures_table, rounds_table
    from host_tools.headend.lopa.session import session

    gs = [parse_gid(x.strip()) for x in gids.split(",")]
    sess = session(ports, base, keystore, db)
    targets = sess.targets() if sess.ports else None
    from host_tools.headend.lopa import HeadEnd, State, serial_connector

    with State(sess.db) as state, HeadEnd(
            state, serial_connector(sess.keystore), timeout=timeout,
            say=lambda m: err_console.print(m, highlight=False)) as he:
        runs, failed = he.run_many(gs, rounds, targets, serial_probe() if lab else None)
    for res in runs:
        if as_json:
            for r in res.rounds:
                click.echo(json.dumps(r.to_json()))
        else:
            console.print(rounds_table(res, f"group {gid_text(res.gid)}"))
    err_console.print(figures_table([r.op.summary() for r in runs],
                                    sess.platform(targets or [])))
    bad = [r for res in runs for r in res.rounds if not r.ok]
    for r in bad:
        err_console.print(f"[bold red]error:[/] {r.error}", highlight=False, soft_wrap=True)
    for why in failed.values():
        err_console.print(f"[bold red]error:[/] {why}", highlight=False, soft_wrap=True)
    if bad or failed:
        sys.exit(1)


# -- doctor ----------------------------------------------------------------------
@main.command()
@port_option
@click.option("--timeout", type=float, default=10.0, show_default=True)
@json_option
@friendly_errors
def doctor(port: str, timeout: float, as_json: bool) -> None:
    """Examine a board: what it is, its clock, heap and flash, the firmware, every pin, the
    ADC; print each problem with its fix (exit status 1 if there is one). Interrupts the
    firmware and soft-resets it back into main.py afterwards."""
    from host_tools.doctor import doctor as examine

    r = examine(port, timeout=timeout)
    if as_json:
        click.echo(json.dumps(r.to_json()))
    else:
        for line in r.lines():
            click.echo(line)
    if not r.ok:
        sys.exit(1)


# -- off-switch, prepaid credit, HAN (docs/OFFSWITCH.md) --------------------------------
@sim.command("relay")
@_index_option
@dir_option
@json_option
@friendly_errors
def sim_relay(meter: int, base: Path | None, as_json: bool) -> None:
    """The relay pin as the virtual board sees it, and the off-switch's armed/locked state."""
    from host_tools.sim import relay

    emit(relay.relay(meter, base), as_json)


@sim.command("press")
@_index_option
@click.argument("pin", type=click.Choice(["button", "tamper"]))
@click.option("--hold", type=float, default=0.2, show_default=True, help="seconds pressed")
@click.option("--latch", is_flag=True, help="leave the input active (a tamper switch left open;"
                                            " `sim pin NAME 0` releases it)")
@dir_option
@json_option
@friendly_errors
def sim_press(meter: int, pin: str, hold: float, latch: bool, base: Path | None,
              as_json: bool) -> None:
    """Press the local button or the tamper switch; print the relay state afterwards."""
    from host_tools.sim import relay

    emit(relay.press(meter, pin, base, hold, latch), as_json)


@main.command("switch")
@port_option
@keystore_option
@meter_option
@click.argument("op", type=click.Choice(["off", "on", "unlock", "status"]))
@json_option
@timeout_option
@friendly_errors
def switch_cmd(port: str, keystore: Path | None, meter_id: int | None, op: str, as_json: bool,
               timeout: float) -> None:
    """Command the off-switch, signed with its own key: OFF opens the relay, ON arms a
    reconnect (the local button closes the relay), UNLOCK clears a tamper lock, STATUS reads
    the state. The answer is signed by the off-switch itself."""
    from host_tools.headend import switch
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        r = switch.status(link) if op == "status" else switch.switch(link, op)
    d = r.to_json()
    emit(d, as_json, lambda: click.echo(
        f"{d['op']}: {d['result']}; relay {d['relay']}"
        + "".join(f", {k}" for k in ("armed", "locked", "tamper") if d.get(k))
        + f" (off-switch counter {d['offswitch_ctr']})"))


def _money(mc: int) -> str:
    return f"{mc / 100_000:.5f}".rstrip("0").rstrip(".")


@main.command()
@port_option
@keystore_option
@meter_option
@click.option("--amount", type=float, required=True, help="credit to add, currency units")
@json_option
@timeout_option
@friendly_errors
def topup(port: str, keystore: Path | None, meter_id: int | None, amount: float, as_json: bool,
          timeout: float) -> None:
    """Add prepaid credit (an authenticated command, logged in the security log)."""
    from host_tools.headend import switch
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        r = switch.topup(link, switch.to_mc(amount))
    emit({**r, "balance": _money(r["balance_mc"])}, as_json,
         lambda: click.echo(f"added {_money(switch.to_mc(amount))}; balance "
                            f"{_money(r['balance_mc'])}"))


@main.command()
@port_option
@keystore_option
@meter_option
@click.option("--t1", type=float, required=True, help="low tariff, currency units per kWh")
@click.option("--t2", type=float, required=True, help="normal tariff, currency units per kWh")
@click.option("--t2-from", type=click.IntRange(0, 24), default=7, show_default=True,
              help="normal tariff from this hour (local)")
@click.option("--t2-to", type=click.IntRange(0, 24), default=23, show_default=True,
              help="normal tariff until this hour (local)")
@click.option("--tz", "tz_s", type=int, default=3600, show_default=True,
              help="local time: UTC offset in seconds (EU summer time added)")
@click.option("--weekend-t1/--no-weekend-t1", default=True, show_default=True,
              help="low tariff all weekend")
@click.option("--prepaid/--postpaid", default=None, help="also switch the billing mode")
@json_option
@timeout_option
@friendly_errors
def tariff(port: str, keystore: Path | None, meter_id: int | None, t1: float, t2: float,
           t2_from: int, t2_to: int, tz_s: int, weekend_t1: bool, prepaid: bool | None,
           as_json: bool, timeout: float) -> None:
    """Set the time-of-use tariffs (and the prepaid mode); authenticated, logged."""
    from host_tools.headend import switch
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        r = switch.set_tariff(link, switch.to_mc(t1), switch.to_mc(t2), t2_from, t2_to, tz_s,
                              True, weekend_t1)
        if prepaid is not None:
            r = switch.set_prepaid(link, prepaid)
    emit(r, as_json)


@main.command()
@port_option
@keystore_option
@meter_option
@json_option
@timeout_option
@friendly_errors
def credit(port: str, keystore: Path | None, meter_id: int | None, as_json: bool,
           timeout: float) -> None:
    """Show the prepaid balance, the tariffs and the tariff registers."""
    from host_tools.headend import switch
    from host_tools.headend.client import open_link

    with open_link(port, Keystore(keystore), meter_id, timeout) as link:
        r = switch.credit(link)
    if as_json:
        click.echo(json.dumps(r))
        return
    reg = r["registers_wh"]
    click.echo(f"{'prepaid' if r['prepaid'] else 'postpaid'}, balance {_money(r['balance_mc'])}"
               f", tariff now T{r['tariff_now']}; import T1 {reg['import_t1']} Wh, "
               f"T2 {reg['import_t2']} Wh; export T1 {reg['export_t1']} Wh, "
               f"T2 {reg['export_t2']} Wh")


# the telegram's objects han prints, and their --json keys
HAN_FIELDS = {"P1_MESSAGE_TIMESTAMP": "time", "ELECTRICITY_USED_TARIFF_1": "import_t1_kwh",
              "ELECTRICITY_USED_TARIFF_2": "import_t2_kwh",
              "ELECTRICITY_DELIVERED_TARIFF_1": "export_t1_kwh",
              "ELECTRICITY_DELIVERED_TARIFF_2": "export_t2_kwh",
              "ELECTRICITY_ACTIVE_TARIFF": "tariff", "CURRENT_ELECTRICITY_USAGE": "import_kw",
              "CURRENT_ELECTRICITY_DELIVERY": "export_kw", "INSTANTANEOUS_VOLTAGE_L1": "v",
              "INSTANTANEOUS_CURRENT_L1": "a"}


@main.command()
@click.option("--port", "-p", required=True, help="the HAN (P1) port: a serial adapter, or a "
                                                  "virtual meter's han pty")
@click.option("--count", "-n", type=int, default=0, help="stop after N telegrams (0: never)")
@click.option("--raw", is_flag=True, help="print each telegram as it came")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="give up after this long without a telegram")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object per telegram (time in epoch seconds, kWh, kW, V, A)")
@friendly_errors
def han(port: str, count: int, raw: bool, timeout: float, as_json: bool) -> None:
    """Read DSMR 5 P1 telegrams from a HAN port and print them, parsed (checksums validated)
    by the PyPI dsmr-parser, as a user checks a P1 port. Reads only."""
    from host_tools.headend import switch

    if raw and as_json:
        _refuse("give --raw or --json, not both")
    texts: list[str] = []
    n = 0
    for t in switch.han_telegrams(port, timeout, raw=texts):
        n += 1
        if raw:
            click.echo(texts.pop(), nl=False)
        else:
            texts.clear()
            v = {name: getattr(t, name).value for name in HAN_FIELDS}
            breaker = getattr(t, "ACTUAL_SWITCH_POSITION", None)
            if as_json:
                d: dict[str, Any] = {"time": int(v["P1_MESSAGE_TIMESTAMP"].timestamp())}
                d.update({key: float(v[name]) for name, key in HAN_FIELDS.items()
                          if name != "P1_MESSAGE_TIMESTAMP"})
                d["tariff"] = int(v["ELECTRICITY_ACTIVE_TARIFF"])
                if breaker is not None:
                    d["breaker"] = int(breaker.value)
                click.echo(json.dumps(d))
            else:
                click.echo(f"{utc(v['P1_MESSAGE_TIMESTAMP'].timestamp())} "
                           f"import {v['ELECTRICITY_USED_TARIFF_1']}/"
                           f"{v['ELECTRICITY_USED_TARIFF_2']} kWh "
                           f"export {v['ELECTRICITY_DELIVERED_TARIFF_1']}/"
                           f"{v['ELECTRICITY_DELIVERED_TARIFF_2']} kWh "
                           f"tariff {int(v['ELECTRICITY_ACTIVE_TARIFF'])} "
                           f"+{v['CURRENT_ELECTRICITY_USAGE']}/-"
                           f"{v['CURRENT_ELECTRICITY_DELIVERY']} kW"
                           f" {v['INSTANTANEOUS_VOLTAGE_L1']} V "
                           f"{v['INSTANTANEOUS_CURRENT_L1']} A"
                           + (f" breaker {breaker.value}" if breaker is not None else ""))
        if count and n >= count:
            return
    raise switch.SwitchError(f"{port}: no telegram for {timeout:g} s")


# -- bench (issue 7): C1-C14 and S1-S4 beside the Elster AS300 ---------------------------
def _csv_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: comma-separated numbers, e.g. 3,50") from None


@main.command()
@click.option("--sim", "mode", flag_value="sim", help="virtual meters started for the bench "
              "(the default)")
@click.option("--port", "port", default=None, help="the component tests on this board")
@click.option("--ports", "ports", default=None,
              help="boards a,b,...: the system tests on all, the component tests on the first")
@click.option("--emulated", "emulated", type=click.Choice(["m0plus", "m4", "m33", "rp2040"]),
              default=None, help="the component tests on an emulated board")
@click.option("--quick", is_flag=True, help="setups 1x3,1x25 and 3 runs (unless --runs)")
@click.option("--runs", type=int, default=None, help="runs of each test [default: 10; 3 with "
              "--quick]")
@click.option("--sizes", default="3,50", show_default=True, help="group sizes of C1-C5")
@click.option("--setups", default=None,
              help="system test setups GxM (G groups of M meters) [default: 1x3,1x25,2x25,"
                   "10x10; 1x3,1x25 with --quick]")
@click.option("--interval", type=int, default=None,
              help="load-profile interval in s set on the meters for S4 [default with --sim: "
                   "2; boards: left as provisioned]")
@keystore_option
@click.option("--dir", "base", type=click.Path(path_type=Path), default=None,
              help="--sim: fleet directory (default: a temporary one, removed afterwards)")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="seconds a board may take to answer the bench")
@click.option("--no-check", is_flag=True, help="skip the S4 lab-truth check of the "
              "aggregates (it reads each meter's plaintexts through its REPL)")
@click.option("--json", "json_file", type=click.Path(path_type=Path), default=None,
              help="write every raw figure, with Elster's beside it, here")
@click.option("--md", "md_file", type=click.Path(path_type=Path), default=None,
              help="write the tables and goal lines as Markdown here")
@click.option("--png", "png_file", type=click.Path(path_type=Path), default=None,
              help="write a chart of ours vs Elster (C1-C5, S1-S4 bytes) here")
@click.option("--update-doc", "doc_file", type=click.Path(path_type=Path), default=None,
              help="put the Markdown between the <!-- bench-sim:results --> markers of this "
                   "file (docs/BENCH.md; only when the bench was not aborted)")
@friendly_errors
def bench(mode: str | None, port: str | None, ports: str | None, emulated: str | None,
          quick: bool, runs: int | None, sizes: str, setups: str | None, interval: int | None,
          keystore: Path | None, base: Path | None, timeout: float, no_check: bool,
          json_file: Path | None, md_file: Path | None, png_file: Path | None,
          doc_file: Path | None) -> None:
    """The paper's component tests C1-C14 and system tests S1-S4 on our meters, printed beside
    the Elster AS300's (seed 000, Tables 1-4). docs/BENCH.md says what each test measures."""
    from host_tools.bench import report
    from host_tools.bench.runner import BenchConfig, BenchError, run_bench

    chosen = [m for m, on in (("sim", mode == "sim"), ("port", port), ("ports", ports),
                              ("emulated", emulated)) if on]
    if len(chosen) > 1:
        raise click.UsageError("give one of --sim, --port, --ports, --emulated")
    what = chosen[0] if chosen else "sim"
    port_list = ([port] if port else [p.strip() for p in (ports or "").split(",")
                                      if p.strip()])
    cfg = BenchConfig(what, port_list, emulated, quick, runs, _csv_ints(sizes),
                      [s for s in setups.split(",")] if setups is not None else None,
                      keystore, interval, timeout, base)
    try:
        cfg.resolved()
    except BenchError as e:
        raise click.UsageError(str(e)) from None

    def progress(msg: str) -> None:
        err_console.print(msg, highlight=False, soft_wrap=True)

    try:
        run = run_bench(cfg, progress)
    except BenchError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    for line in report.header_lines(run):
        console.print(line, highlight=False, soft_wrap=True)
    for t in report.component_tables(run.results) + report.system_tables(run.results):
        click.echo(t.text())
    for g in report.goals(run.results, run.capacity):
        colour = {"pass": "green", "fail": "red"}.get(g.status, "yellow")
        console.print(f"[{colour}]{g.status.upper()}[/]: {g.goal}: {g.detail}",
                      highlight=False, soft_wrap=True)
    for path, write in ((json_file, report.write_json), (md_file, report.write_markdown),
                        (png_file, report.write_png)):
        if path is not None:
            write(run, path)
            err_console.print(f"wrote {path}", highlight=False)
    if doc_file is not None and not run.aborted:
        report.update_doc(run, doc_file)
        err_console.print(f"updated {doc_file}", highlight=False)
    if run.interrupted:
        err_console.print("interrupted (Ctrl-C)" + (
            f": the results measured so far are in {json_file}" if json_file else ""),
            highlight=False, soft_wrap=True)
        sys.exit(INTERRUPTED)
    if run.aborted:
        for f in run.failures or [run.aborted]:
            err_console.print(f"[bold red]error:[/] bench aborted in {f['test']}: "
                              f"{f['message']}", highlight=False, soft_wrap=True)
        if json_file:
            err_console.print(f"the results measured are in {json_file}", highlight=False)
        sys.exit(1)


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


# -- mqtt: the meters on an MQTT broker, Home Assistant discovery ------------------------
@main.command()
@click.option("--broker", required=True, help="mqtt://[user[:password]@]HOST[:PORT]")
@click.option("--ports", default=None, help="serial ports, comma-separated: a,b,c")
@click.option("--dir", "base", type=click.Path(path_type=Path), default=None,
              help="every meter of a virtual fleet (its keystore.json becomes the default)")
@keystore_option
@click.option("--every", "interval_s", type=click.FloatRange(min=1.0), default=10.0,
              show_default=True, help="seconds between two readings of each meter")
@click.option("--state", "state_path", type=click.Path(path_type=Path), default=None,
              help="the last interval the broker acknowledged, per meter (default: "
                   "~/.local/state/meterctl/mqtt.json)")
@timeout_option
@friendly_errors
def mqtt(broker: str, ports: str | None, base: Path | None, keystore: Path | None,
         interval_s: float, state_path: Path | None, timeout: float) -> None:
    """Publish meters on an MQTT broker: state as JSON on meterctl/<id>/state, each closed
    interval once on meterctl/<id>/interval, and Home Assistant discovery configs. Runs until
    Ctrl-C (exit 0); reconnects when the broker restarts, and publishes the intervals that
    closed meanwhile."""
    from host_tools.headend.lopa.session import session
    from host_tools.mqtt import Bridge, MqttError, parse_broker

    try:
        addr = parse_broker(broker)
        sess = session(ports, base, keystore, None)
        bridge = Bridge(addr, sess.ports or [], sess.keystore, interval_s=interval_s,
                        state_path=state_path, timeout=timeout,
                        say=lambda m: err_console.print(m, highlight=False))
        bridge.connect()
    except MqttError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    err_console.print(f"publishing {len(bridge.meters)} meter(s) every {interval_s:g} s; "
                      "Ctrl-C stops", highlight=False)
    try:
        bridge.run()
    except KeyboardInterrupt:
        pass
    finally:
        bridge.close()
    err_console.print(f"stopped: {bridge.published_states} states, "
                      f"{bridge.published_intervals} intervals published", highlight=False)


# -- watch, devs (the lab bench's live view and board discovery) ---------------------------
def _refuse(msg: str) -> None:
    """A usage error found before touching a meter: one line, exit status 2."""
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _check_outputs(*paths: Path | None) -> None:
    from host_tools.export import ExportError, check_writable

    for path in paths:
        if path is not None:
            try:
                check_writable(path)
            except ExportError as e:
                _refuse(str(e))


@main.command()
@click.option("--port", "-p", "ports", multiple=True,
              help="a meter's serial port (repeat for several)")
@dir_option
@keystore_option
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="head-end database for the last LoPA round (default with --dir: the "
                   "fleet's headend.db if there is one; else no round is shown)")
@click.option("--every", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="seconds between frames")
@click.option("--once", is_flag=True, help="print one frame and exit")
@json_option
@click.option("--timeout", type=float, default=3.0, show_default=True,
              help="seconds to wait for each answer")
@friendly_errors
def watch(ports: tuple[str, ...], base: Path | None, keystore: Path | None, db: Path | None,
          every: float, once: bool, as_json: bool, timeout: float) -> None:
    """Live view: V, I, P, PF, energy, relay, credit and the last LoPA round of each meter,
    refreshed every second until Ctrl-C (exit 0). --json (with --once): one object per meter."""
    import time

    from rich.live import Live

    from host_tools.watch import WIDTH, Target, frame, frame_table, json_row

    if ports and base is not None:
        _refuse("give --port or --dir, not both")
    if not ports and base is None:
        _refuse("give --port P (repeatable) or --dir FLEET")
    if as_json and not once:
        _refuse("--json needs --once")
    if db is not None and not db.is_file():
        _refuse(f"{db}: no such head-end database")
    if base is not None:
        from host_tools.sim import fleet

        base = base.resolve()
        sts = fleet.status(base)
        if not sts:
            _refuse(f"no virtual meters in {base}")
        targets = [Target(str(s["port"]), None) for s in sts if s.get("port")]
        if not targets:
            _refuse(f"no running virtual meters in {base}")
        if keystore is None and (base / "keystore.json").exists():
            keystore = base / "keystore.json"
        if db is None and (base / "headend.db").is_file():
            db = base / "headend.db"
    else:
        targets = [Target(p, None) for p in ports]
    ks = Keystore(keystore)
    view = Console(width=min(console.width, WIDTH))
    if once:
        rows = frame(targets, ks, db, timeout)
        if as_json:
            for r in rows:
                click.echo(json.dumps(json_row(r)))
        else:
            view.print(frame_table(rows))
        return
    try:
        with Live(console=view, auto_refresh=False) as live:
            while True:
                t0 = time.monotonic()
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                live.update(frame_table(frame(targets, ks, db, timeout),
                                        f"{stamp}  every {every:g} s, Ctrl-C quits"),
                            refresh=True)
                time.sleep(max(0.0, every - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        pass  # the user's way out: exit 0


@main.command()
@dir_option
@keystore_option
@json_option
@friendly_errors
def devs(base: Path | None, keystore: Path | None, as_json: bool) -> None:
    """MicroPython boards on USB (port, VID:PID, serial number, maker; as `mpremote devs`)
    and the running virtual meters (port, profile, meter id)."""
    from host_tools.sim import fleet
    from host_tools.watch import devs_lines, usb_boards, virtual_meters

    usb = usb_boards()
    virtual = virtual_meters(base, keystore)
    if as_json:
        click.echo(json.dumps({"usb": usb, "virtual": virtual}))
        return
    for line in devs_lines(usb, virtual, (base or fleet.default_dir()).resolve()):
        click.echo(line)


if __name__ == "__main__":
    main()
