# The virtual board's "ROM": what a Pico's port C code does before the REPL.
#
# Runs inside the real MicroPython VM (unix port), started by the supervisor
# (host_tools/sim/supervisor.py) as `micropython -i -c BOOT ARGS`. It is never flashed to a
# board. As a board runs its ROM's C code from flash, the VM runs this module in place: it is
# compiled by mpy-cross into a ROMFS image (host_tools/sim/fleet.py rom_image) that the
# launcher maps read-only outside the heap (MPVM_BOARDROM_MAP); BOOT mounts it, imports this
# module from it and calls boot(). Its bytecode, strings and names stay in the mapping; only
# the objects it makes live in the heap (docs/hardware.md, "Memory"). It:
#   - mounts the meter's own flash directory as "/" behind a jail, so that no
#     path (not even "/..") leaves it, with Pico-like statvfs and ilistdir sizes;
#   - hides the unix-only escape hatches (os.system, vfs.VfsPosix, ...) behind
#     board-like `os` and `vfs` modules;
#   - provides the hardware surface as the built-in module `_vhw` (pins, HAN TX, the ADC's
#     DMA ring), backed by pipes to the supervisor and the ring it writes (mapped read-only);
#   - mounts the ROMFS partition, when it holds a valid image, as vfs.VfsRom at /rom with
#     "/rom" and "/rom/lib" on sys.path, as a port with a ROMFS partition does at boot: .mpy
#     files imported from it run in place, outside the heap. The partition is a file the
#     launcher (host_tools/sim/vmlaunch.py) maps read-only before the VM starts
#     (MPVM_ROMFS_MAP, shared); `vfs.rom_ioctl` writes a new image as a board's flash
#     controller does (mpremote romfs deploy, meterctl flash): in place, so the mapping
#     reads back what was written, and a power cut mid-write leaves a torn image;
#   - runs boot.py, then main.py when powering up into the friendly REPL,
#     exactly as a Pico does; `-i` then drops into the REPL.
#
# argv: -c ROOT MODE HW_IN_FD HW_OUT_FD HAN_FD FLASH_BYTES
#   MODE is "run" (boot.py + main.py), or "raw" / "repl" (boot.py only: a soft
#   reset from the raw REPL, where a board skips main.py, or a recovery).

# Module-level code, not closures: every captured variable would be a cell and every function
# reaching one a closure object, both on the heap. Nothing of this module reaches the REPL's
# globals (a Pico's REPL starts with an empty namespace): boot() takes itself out of them.
import json
import os
import sys
import time
import vfs

import _thread

_host_vfs = vfs.VfsPosix  # kept before the board's `vfs` hides it
# set by boot(): the ROMFS partition (its file, and the launcher's read-only mapping of it)
_rom_file = None
_rom_mem = None
_adc = None  # the ADC's ring, the launcher's read-only shared mapping (MPVM_ADC_MAP)


def _norm(cwd, path):
    # Resolve against the jail's own cwd and clamp ".." at the root.
    if not path.startswith("/"):
        path = cwd + "/" + path
    parts = []
    for p in path.split("/"):
        if p == "..":
            if parts:
                parts.pop()
        elif p and p != ".":
            parts.append(p)
    return "/" + "/".join(parts)


# The power-cut campaign's hook (host_tools/reliability/powercut.py), modelled on littlefs's
# power-loss tests: while the supervisor has armed it, every persisted change to the flash
# (open for writing, write, rename, remove, mkdir, rmdir) is counted. At the k-th the VM
# reports the point and stops right there (torn: a write is first half done), and the
# supervisor cuts the power (SIGKILL) at exactly that point. k < 0 only counts and reports
# each point; with `match`, only points whose path contains it count. Disarmed (k == 0), it
# costs one test. Under a board's filesystem (flashdev.py: littlefs or FAT on the modelled
# chip) the points are the chip's erases and programs ("block" level, the default), or, armed
# with level "file", the firmware's own file operations as on the unix jail (the campaigns'
# cuts by file name); what a cut there leaves is then littlefs's or FAT's doing.
# its state: k, points counted, torn, match, cutting, file level on a board's filesystem (one
# list: the ROM's globals stay few)
_wp = [0, 0, False, "", False, False]
_wp_lock = _thread.allocate_lock()
_poll_lock = _thread.allocate_lock()  # _Hardware.poll()'s
_board_fs = []  # a board's filesystem: the unhooked (open, os functions), set by boot()


def _wp_arm(spec):
    files = bool(_board_fs) and spec.get("level") == "file" and int(spec.get("k", 0)) != 0
    with _wp_lock:
        _wp[0], _wp[1] = int(spec.get("k", 0)), 0
        _wp[2] = bool(spec.get("torn", False))
        _wp[3] = str(spec.get("match") or "")
        _wp[5] = files
    if _board_fs:
        _wp_files(files)
    hw.event({"ev": "cut-armed", "k": _wp[0]})


def _wp_block(op, path, f=None, data=None):
    # the flash model's erase and program points: not while the file level is armed
    if not _wp[5]:
        _wp_hit(op, path, f, data)


def _wp_files(on):
    # A board's filesystem, file level: builtins.open and the board os's write operations go
    # through write points while armed, and are the VM's own again once disarmed.
    import builtins

    opened, ops = _board_fs
    if not on:
        builtins.open = opened
        for name in ops:
            setattr(_BoardOS, name, ops[name])
        return

    def hooked_open(path, mode="r", *a):
        p = _norm(os.getcwd(), path)
        if "w" in mode or "a" in mode or "x" in mode:
            _wp_hit("open-" + mode, p)  # creates or truncates
        f = opened(path, mode, *a)
        return _WFile(f, p) if "r" not in mode or "+" in mode else f

    def hooked(name, fn):
        def op(*paths):
            _wp_hit(name, ">".join([_norm(os.getcwd(), x) for x in paths]))
            return fn(*paths)

        return op

    builtins.open = hooked_open
    for name in ops:  # unlink is remove, as the jail (VFS-level) sees it
        setattr(_BoardOS, name, hooked("remove" if name == "unlink" else name, ops[name]))


def _wp_hit(op, path, f=None, data=None):
    wp = _wp
    if not wp[0] and not wp[4]:
        return
    with _wp_lock:
        cut = wp[4]
        if not cut and wp[3] not in path:
            return
        if not cut:
            wp[1] += 1
            if wp[0] < 0:
                hw.event({"ev": "wp", "n": wp[1], "op": op, "path": path})
            elif wp[1] == wp[0]:
                cut = wp[4] = True
                torn = wp[2] and data is not None and len(data) > 1
                if torn:  # f: a file, or (nvram) a function that writes
                    (f if callable(f) else f.write)(data[: len(data) // 2])
                hw.event({"ev": "cut", "n": wp[1], "op": op, "path": path, "torn": torn})
    while cut:  # until the supervisor's SIGKILL; any other writer stops here too
        time.sleep_ms(1000)


_wfile = None  # the class below, made the first time the hook is armed


def _WFile(f, path):
    # A file open for writing while the hook is armed: each write() is a write point. Its
    # class is made on the first use (the power-cut campaign's), not at every boot.
    global _wfile
    if _wfile is None:
        class WFile:
            def __init__(self, f, path):
                self._f = f
                self._path = path

            def write(self, data):
                _wp_hit("write", self._path, self._f, data)
                return self._f.write(data)

            def read(self, *a):
                return self._f.read(*a)

            def readinto(self, *a):
                return self._f.readinto(*a)

            def readline(self, *a):
                return self._f.readline(*a)

            def seek(self, *a):
                return self._f.seek(*a)

            def tell(self):
                return self._f.tell()

            def flush(self):
                return self._f.flush()

            def close(self):
                return self._f.close()

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self._f.close()

        _wfile = WFile
    return _wfile(f, path)


class _JailFS:
    # A VFS object: MicroPython's VFS layer calls these with paths
    # relative to the mount point ("/"), already stripped of it.
    BLOCK = 4096

    def __init__(self, root, size):
        # An unrooted VfsPosix, with the root joined here: a rooted one
        # builds both paths of rename() in one shared buffer and fails.
        self._fs = _host_vfs()
        self._root = root.rstrip("/")
        self._root_s = self._root + "/"
        self._cwd = "/"
        self._size = size

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def _p(self, path):
        # A path with no component that starts with "." (every import's lookups) is joined as
        # it is; others are normalised first, ".." clamped at the root. A board's filesystem is
        # C code that allocates nothing to look a file up: in Python here each lookup leaves
        # garbage, which spread among the firmware's objects as it boots (fragmentation).
        if path.find("/.") < 0 and not path.startswith("."):
            if path.startswith("/"):
                return self._root + path
            if self._cwd == "/":
                return self._root_s + path
        return self._root + _norm(self._cwd, path)

    def open(self, path, mode):
        if not _wp[0] and not _wp[4]:
            return self._fs.open(self._p(path), mode)
        p = _norm(self._cwd, path)
        if "w" in mode or "a" in mode or "x" in mode:
            _wp_hit("open-" + mode, p)  # creates or truncates
        f = self._fs.open(self._p(path), mode)
        return _WFile(f, p) if "r" not in mode or "+" in mode else f

    def ilistdir(self, path):
        base = self._p(path)
        for ent in self._fs.ilistdir(base):
            name, typ, ino = ent[0], ent[1], ent[2]
            size = 0
            if typ == 0x8000:
                # VfsPosix reports size 0; a board reports the real size.
                size = self._fs.stat(base.rstrip("/") + "/" + name)[6]
            yield (name, typ, ino, size)

    def stat(self, path):
        return self._fs.stat(self._p(path))

    def chdir(self, path):
        p = _norm(self._cwd, path)
        if not self._fs.stat(self._root + p)[0] & 0x4000:
            raise OSError(20)  # ENOTDIR
        self._cwd = p

    def getcwd(self):
        return self._cwd

    def mkdir(self, path):
        _wp_hit("mkdir", _norm(self._cwd, path))
        self._fs.mkdir(self._p(path))

    def rmdir(self, path):
        _wp_hit("rmdir", _norm(self._cwd, path))
        self._fs.rmdir(self._p(path))

    def remove(self, path):
        _wp_hit("remove", _norm(self._cwd, path))
        self._fs.remove(self._p(path))

    def rename(self, old, new):
        _wp_hit("rename", _norm(self._cwd, old) + ">" + _norm(self._cwd, new))
        self._fs.rename(self._p(old), self._p(new))

    def _used_blocks(self, path):
        n = 1
        for ent in self._fs.ilistdir(path):
            full = path.rstrip("/") + "/" + ent[0]
            if ent[1] == 0x4000:
                n += self._used_blocks(full)
            else:
                n += (self._fs.stat(full)[6] + self.BLOCK - 1) // self.BLOCK or 1
        return n

    def statvfs(self, path):
        # The board's flash size, not the host disk's.
        total = self._size // self.BLOCK
        free = max(0, total - self._used_blocks(self._root + "/"))
        return (self.BLOCK, self.BLOCK, total, free, free, 0, 0, 0, 0, 255)


class _Hardware:
    # The hardware surface, as the built-in module `_vhw`. board/virtual
    # wraps it behind the same interface as the real boards' adapters. Its channels to the
    # supervisor are opened before the jail hides the host filesystem.
    def __init__(self, fd_in, fd_out, fd_han):
        import select

        self._in = open("/proc/self/fd/%d" % fd_in, "rb")
        self._out = open("/proc/self/fd/%d" % fd_out, "wb")
        self._han = open("/proc/self/fd/%d" % fd_han, "wb")
        self._han_end = time.ticks_us()  # when the HAN line has sent all it was given
        self.inputs = {}
        self.outputs = {}  # as the pins were left (a latching relay keeps its state)
        self.wave = {}
        self.meter = {}
        # the supervisor's answer to a file's start (_run_file), whichever thread reads it (the
        # flash model's may: flashdev.py _arm_check); made here, before the ballast is weighed
        self.go = 0
        self._poll = select.poll()
        self._poll.register(self._in, select.POLLIN)
        # Battery-backed RAM (board.nvram; an STM32's backup SRAM): None without one (a Pico).
        # The launcher's shared, writable mapping of nvram.bin in the meter's directory,
        # outside the heap as a board's SRAM is: a store into it is in the file at once, so a
        # power cut (SIGKILL) keeps it, and one cut half-way through a copy leaves half of it.
        self.nvram = None
        m = os.getenv("MPVM_NVRAM_MAP")
        if m:
            import uctypes

            a = m.split()
            self.nvram = uctypes.bytearray_at(int(a[0]), int(a[1]))
        # The hardware pipe's doorbell (supervisor.py _send_hw): None without the mapping
        self.bell = None
        m = os.getenv("MPVM_BELL_MAP")
        if m:
            import uctypes

            a = m.split()
            self.bell = uctypes.bytearray_at(int(a[0]), int(a[1]))
        self._bell_seen = -1  # the bell as poll() last read it; -1: not read yet

    def nvram_write(self, off, data):
        # Bytes off.. of the battery-backed RAM. A write point for the power-cut campaign
        # (path "/nvram"): a cut there may leave it half done, as stores cut by a power loss.
        if off < 0 or off + len(data) > len(self.nvram):
            raise ValueError("nvram: out of range")
        if _wp[0] or _wp[4]:
            _wp_hit("nvram", "/nvram", lambda d: self._nv_put(off, d), data)
        self._nv_put(off, data)

    def _nv_put(self, off, data):
        self.nvram[off:off + len(data)] = data

    def poll(self):
        # Apply whatever the supervisor sent (input pins, waveform). One thread reads the pipe
        # at a time (the flash model polls too, flashdev.py); another one returns at once.
        # The supervisor rings the doorbell after it writes a message (_send_hw): while the
        # bell reads as at the last look, nothing was sent and no system call is made. Every
        # pin read comes here: two a pass of core 1's 10-ms loop, each a poll() system call
        # before (the bell counts modulo 256: a message is missed only if exactly 256 others
        # follow it before the next look, and then only until the next one).
        bell = self.bell
        if bell is not None and bell[0] == self._bell_seen:
            return
        if not _poll_lock.acquire(0):
            return
        try:
            if bell is not None:
                self._bell_seen = bell[0]  # before the pipe is read: a later ring is seen
            self._poll_pending()
        finally:
            _poll_lock.release()

    def _poll_pending(self):
        while self._poll.poll(0):
            line = self._in.readline()
            if not line:
                self._poll.unregister(self._in)
                return
            msg = json.loads(line)
            if "inputs" in msg:
                self.inputs.update(msg["inputs"])
            if "outputs" in msg:
                self.outputs.update(msg["outputs"])
            if "wave" in msg:
                self.wave = msg["wave"]
            if "meter" in msg:
                self.meter = msg["meter"]
            if "cut" in msg:
                _wp_arm(msg["cut"])
            if "go" in msg:
                self.go = 1

    def output(self, name, value):
        self.outputs[name] = value
        self._out.write(b'{"out":"%s","v":%d}\n' % (name, value))

    def event(self, msg):
        self._out.write(json.dumps(msg).encode() + b"\n")

    # The HAN UART as board/rp2_pico configures it (115200 8N1, txbuf=1024): a byte takes 10
    # bit times on the line, and write() returns only once what is left fits the TX buffer, as
    # the rp2 port's UART write waits for room in its ring (ports/rp2/machine_uart.c, v1.28.0).
    def han_write(self, data):
        n = self._han.write(data)
        now = time.ticks_us()
        start = self._han_end if time.ticks_diff(self._han_end, now) > 0 else now
        self._han_end = time.ticks_add(start, len(data) * 10_000_000 // 115200)
        wait = time.ticks_diff(self._han_end, now) - 1024 * 10_000_000 // 115200
        if wait > 0:
            time.sleep_us(wait)
        return n

    # The ADC's DMA ring: the supervisor (the analog front end) writes V and I samples into it,
    # a little ahead of real time, as a board's ADC does by DMA (supervisor.py AdcRing).
    # (Their functions are looked up once, in boot(): an import in a function that runs
    # thousands of times a second searches the filesystem first for the extensible built-ins
    # (py/builtinimport.c), and under a board profile that filesystem is littlefs or FAT on a
    # modelled flash chip: 0.5 ms a call, a third of a host core for an idle meter.)
    def adc_head(self):
        # (samples written since power-on, rate, how many of them are ahead of now, ring size)
        # Read until two reads agree: unpack_from reads byte by byte, so a read that overlaps
        # the front end's store of the count can mix its old and new bytes.
        unpack_from = self._su[0]
        h = unpack_from("<QIII", _adc, 0)
        while True:
            h2 = unpack_from("<QIII", _adc, 0)
            if h2 == h:
                return h
            h = h2

    def adc_read(self, k, n, v_buf, i_buf):
        # samples k .. k+n-1 of both channels into v_buf[0:n], i_buf[0:n] (array "H")
        unpack_from, bytearray_at, addressof = self._su
        size = unpack_from("<I", _adc, 16)[0]
        ring = memoryview(_adc)
        v = bytearray_at(addressof(v_buf), 2 * n)
        i = bytearray_at(addressof(i_buf), 2 * n)
        j = 0
        while j < n:
            pos = (k + j) % size
            m = size - pos if size - pos < n - j else n - j
            a = 32 + 2 * pos
            v[2 * j:2 * (j + m)] = ring[a:a + 2 * m]
            a += 2 * size
            i[2 * j:2 * (j + m)] = ring[a:a + 2 * m]
            j += m


class _BoardOS:
    # What a Pico's `os` offers: no system(), no getenv(), no Vfs classes. Used as the module
    # itself (the class, never an instance), so its functions need no staticmethod.
    sep = "/"
    ilistdir = os.ilistdir
    listdir = os.listdir
    mkdir = os.mkdir
    rmdir = os.rmdir
    remove = os.remove
    unlink = os.remove
    rename = os.rename
    stat = os.stat
    statvfs = os.statvfs
    chdir = os.chdir
    getcwd = os.getcwd
    urandom = os.urandom
    mount = vfs.mount
    umount = vfs.umount

    def uname():
        # An attrtuple, as a board's (py/objattrtuple.c): a tuple whose items are also named
        # attributes, printed "(sysname=..., ...)" (a namedtuple prints its type's name first).
        # One object (a board's is static), made on the first call and kept on hw: no heap at
        # boot for a rarely asked question. Until then hw.uname holds a board profile's values
        # (boot()); none: the unix profile's. The names are split from one string, not
        # identifiers: each identifier in the ROM is a qstr interned at boot (heap).
        u = getattr(hw, "uname", None)
        if u is None or type(u) is tuple:
            from collections import namedtuple

            n = "uname_result sysname nodename release version machine".split()

            class uname(namedtuple(n[0], n[1:])):
                def __repr__(self):
                    return ("(sysname=%r, nodename=%r, release=%r, version=%r, machine=%r)"
                            % tuple(self))

                __str__ = __repr__

            u = hw.uname = uname(*(u or ("virtual", "virtual", "1.29.0", sys.version,
                                         "virtual meter (MicroPython unix VM)")))
        return u

    def sync():
        # extmod/modos.c mp_os_sync(): a CTRL_SYNC to every FAT mount, i.e. the pyboard's
        # flash cache written back (flashdev.py). littlefs and the jail cache nothing.
        if _fat_dev is not None:
            _fat_dev.ioctl(3, 0)


# `sys` as a board has it. rp2 builds at MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES
# (ports/rp2/mpconfigport.h, v1.28.0) and sets none of these, so py/mpconfig.h's defaults leave
# them out: sys.atexit, sys.exc_info, sys.executable and sys.settrace (default 0; the unix port
# turns them on: ports/unix/mpconfigport.h, ports/unix/variants/mpconfigvariant_common.h) and
# sys.getsizeof, sys.intern and sys.tracebacklimit (the EVERYTHING level only). So a soft reset
# runs no atexit handler on a board, and MicroPython's tests/misc/sys_atexit.py prints SKIP
# there; on the unix VM the handler ran when the process ended, i.e. at the virtual board's
# soft reset, after the command that registered it. `import sys` gives a real module
# (boardsys.py in the ROM image, an empty module boot() fills) holding every other
# name of the VM's sys: the same objects (path, modules, stdin, ...), so that a change to one
# shows in both; a name rebound on it (sys.ps1 = ...) is not seen by the VM's REPL.


class _BoardVFS:
    # VfsRom and rom_ioctl only with a ROMFS partition (boot()), as MICROPY_VFS_ROM is 0 on a
    # build without one (ports/rp2/mpconfigport.h).
    mount = vfs.mount
    umount = vfs.umount
    VfsRom = vfs.VfsRom


# vfs.rom_ioctl(op, ...), as a port with one ROMFS partition implements it (extmod/vfs.h:
# 1 count, 2 memory, 3 prepare, 4 write, 5 end, 6 erase block size). Like a board's flash
# controller it writes the partition in place: the (shared, read-only) mapping then holds what
# was written, and a power cut mid-write leaves a torn image.
_rom_f = None


def _rom_ioctl(op, *a):
    global _rom_f
    if op == 1:
        return 1
    if not a or a[0] != 0:
        return -22  # EINVAL: no such partition
    if op == 2:
        return memoryview(_rom_mem)
    if op == 6:
        return 4096
    if op == 3:
        off, n = (0, a[1]) if len(a) == 2 else (a[1], a[2])
        if off < 0 or off + n > len(_rom_mem):
            return -22
        if _rom_f is None:
            _rom_f = _host_vfs().open(_rom_file, "r+b")
        _rom_f.seek(off)
        for i in range(0, n, 4096):
            _rom_f.write(b"\xff" * min(4096, n - i))  # erased flash
        _rom_f.flush()
        return 4  # smallest write
    if _rom_f is None:
        return -1  # EPERM: not prepared
    if op == 4:
        if a[1] < 0 or a[1] + len(a[2]) > len(_rom_mem):
            return -22
        _rom_f.seek(a[1])
        _rom_f.write(a[2])
        _rom_f.flush()
        return 0
    if op == 5:
        _rom_f.close()
        _rom_f = None
        return 0
    return -22


hw = None  # the _Hardware, once boot() made it
_fat_dev = None  # the FAT filesystem's block device (flashdev.py), which os.sync() syncs


def _run_file(name, g):
    # None: the file ran to its end, or there is none; else the name of the exception that
    # ended it
    try:
        with open(name) as f:
            src = f.read()
    except OSError:
        return None
    err = None
    try:
        # Compiled before Ctrl-C turns into SIGINT, as a board's pyexec compiles a file before
        # it turns its interrupt character on.
        code = compile(src, name, "exec")
    except Exception as e:  # noqa: BLE001 - a board prints and goes on
        code, err = None, e
    src = None  # not kept for as long as the file runs (main.py: for ever)
    while True:
        finished = False
        try:
            if err is not None:
                hw.event({"ev": "file", "name": name, "s": "start"})
                raise err
            # The supervisor turns Ctrl-C into SIGINT from this event on. It answers ("go")
            # once it has handed the file a Ctrl-C that came while the board booted (held until
            # now, supervisor.py _hand_over), so that the file cannot turn Ctrl-C off before
            # the launcher knows of it (vmlaunch.py).
            hw.go = 0
            hw.event({"ev": "file", "name": name, "s": "start", "go": 1})
            while not hw.go:
                hw._poll.poll(50)
                hw.poll()
            exec(code, g)
            finished = True
        except BaseException as e:  # noqa: BLE001 - a board prints and goes on
            text = _exception_text(e)
            if text is None:
                # No heap left to word it apart (the file's objects are still held by its
                # globals): a board's pyexec prints it straight out without allocating
                # (py/obj.c mp_obj_print_exception), and so does this, the ROM's frames too.
                sys.print_exception(e)
                err = type(e).__name__
                break
            if isinstance(e, KeyboardInterrupt) and ('File "%s"' % name) not in text:
                # The SIGINT landed in these lines, not in the file: before it began (on a
                # board the interrupt is not on yet, and a Ctrl-C then is a byte), or after it
                # ended. The file runs as if it had not come (the supervisor sends a Ctrl-C
                # that had no effect again).
                if finished:
                    break
                continue
            # Print it as a board would: without the ROM's own frames (mpy-cross -s).
            for line in text.split("\n"):
                if line and 'File "rom.py"' not in line:
                    print(line)
            err = type(e).__name__
        break
    # Ctrl-C on, as between a board's files; a Ctrl-C handed to this file and not taken is
    # dropped in the VM (vmlaunch.py: the supervisor hands it on to what runs next)
    import micropython

    micropython.kbd_intr(3)
    hw.event({"ev": "file", "name": name, "s": "end", "err": err})
    return err


def _exception_text(e):
    # the traceback as text, or None if the heap has no room for it even after a collection
    import gc
    import io

    for _ in range(2):
        try:
            buf = io.StringIO()
            sys.print_exception(e, buf)
            return buf.getvalue()
        except MemoryError:
            buf = None
            gc.collect()
    return None


def boot(g):
    # Called by the supervisor's BOOT with the REPL's globals `g`, in which boot.py and main.py
    # run. The ROM's own image is unmounted first: nothing of it is left to the firmware.
    global _rom_file, _rom_mem, _adc, hw, _fat_dev
    g.pop("rom", None)
    sys.modules.pop("rom", None)
    # sys as a board has it (above): an empty module from the ROM image (boardsys.py, stored
    # there as _vhw.mpy so that it adds no name to the VM's qstr pool), filled with the VM's sys
    import _vhw as board_sys

    sys.modules.pop("_vhw", None)
    for name in dir(sys):
        if name[:2] != "__" and name not in ("atexit", "exc_info", "executable", "settrace",
                                             "getsizeof", "intern", "tracebacklimit"):
            setattr(board_sys, name, getattr(sys, name))
    board_sys.__name__ = "sys"
    del board_sys.__file__  # a built-in module has none
    # A board's port profile (host_tools/sim/profiles.py; none: the unix profile):
    # board_identity.py, in this ROM image, makes the VM present itself as that build, and
    # imports the port's hardware models (port_rp2.py, port_stm32.py) when the image holds
    # them, while it is still mounted (their code stays in its mapping). hw.profile: the
    # profile's dict; None on the unix profile, which passes none. A profile with a board's
    # filesystem (fs.type lfs2 or fat) mounts it on the modelled flash (flashdev.py, imported
    # now too). Modules are named by strings and held in locals reused below: every
    # identifier of the ROM's is interned at boot into the heap's qstr pools, profile or not
    # (9 more pushed the firmware's import into a sixth, 7 KB pool).
    prof = os.getenv("MPVM_PROFILE")
    identity = flashdev = None
    if prof:
        prof = json.loads(prof)
        identity = __import__("board_identity").load(prof)
        if prof["fs"]["type"] in ("lfs2", "fat"):
            flashdev = __import__("flashdev")
    elif os.getenv("MPVM_QSTR_FILL"):
        # the unix profile standing for a board (fleet.start board_pools): the qstr pools
        # filled as under a board's profile, before the firmware's first name
        __import__("board_identity").fill_qstr_pools()
    vfs.umount("/_rom")
    root, mode = sys.argv[1], sys.argv[2]
    fd_in, fd_out, fd_han, flash_bytes = [int(a) for a in sys.argv[3:7]]
    sys.argv[:] = []
    hw = _Hardware(fd_in, fd_out, fd_han)  # before the jail hides the host filesystem
    hw.profile = prof
    _rom_file = os.getenv("MPVM_ROMFS")
    import struct
    import uctypes

    hw._su = (struct.unpack_from, uctypes.bytearray_at, uctypes.addressof)

    rom_map = os.getenv("MPVM_ROMFS_MAP")
    if rom_map:
        a = rom_map.split()
        _rom_mem = uctypes.bytearray_at(int(a[0]), int(a[1]))  # the mapping: no heap, no writes
    a = os.getenv("MPVM_ADC_MAP").split()
    _adc = uctypes.bytearray_at(int(a[0]), int(a[1]))
    # The supervisor sends the pins as they were left (a latching relay) right after it
    # powers the VM on: wait for that first message, so that no pin is read before it.
    hw._poll.poll(2000)
    hw.poll()
    vfs.umount("/")
    if flashdev is None:
        vfs.mount(_JailFS(root, flash_bytes), "/")
        os.chdir("/")
        sys.path[:] = ["", ".frozen", "/lib"]
    else:
        # the meter's directory is the one above fs/; a is (cwd, flash device, sys.path):
        # stm32 with a micro SD card boots from /sd (flashdev.py mount)
        a = flashdev.mount(hw, _host_vfs(), root.rstrip("/").rsplit("/", 1)[0], prof["fs"],
                           _wp_block, prof.get("sd"))
        import builtins

        _board_fs[:] = [builtins.open, {"mkdir": os.mkdir, "rmdir": os.rmdir,
                                        "remove": os.remove, "unlink": os.remove,
                                        "rename": os.rename}]
        os.chdir(a[0])
        sys.path[:] = a[2]
        if a[0] != "/":  # stm32: the flash's FAT, whose cache os.sync() writes back
            _fat_dev = a[1]
            # stm32 main.c: a soft reset runs storage_flush() (the VM exits on one)
            sys.atexit(_BoardOS.sync)
        flashdev = None
    if identity is not None and _rom_mem is None:  # a board's profile without ROMFS partition
        del _BoardVFS.VfsRom
    elif _rom_mem is not None:
        _BoardVFS.rom_ioctl = _rom_ioctl
        try:
            vfs.mount(vfs.VfsRom(_rom_mem), "/rom")
            sys.path[2:2] = ["/rom", "/rom/lib"]
        except OSError:
            pass  # an erased partition, or no valid image in it: the filesystem alone
    if identity is None:
        sys.modules["_vhw"] = hw  # board/virtual's; hidden under a board's profile
    sys.modules["os"] = _BoardOS
    sys.modules["uos"] = _BoardOS
    sys.modules["vfs"] = _BoardVFS
    sys.modules["sys"] = sys.modules["usys"] = board_sys
    if identity is not None:  # the board's identity on it, its import filter and models
        hw.uname = identity(prof, hw, board_sys)
    hw.event({"ev": "booted", "mode": mode})
    # An exception out of boot.py (a Ctrl-C too) keeps main.py from running, as on a board
    # (ports/rp2/main.c, ports/stm32/boardctrl.c boardctrl_run_boot_py, v1.28.0)
    if _run_file("boot.py", g) is None and mode == "run":
        _run_file("main.py", g)
    # From here on Ctrl-C reaches the REPL (as a byte at its prompt).
    hw.event({"ev": "rom-done"})
