# The virtual board's "ROM": what a Pico's port C code does before the REPL.
#
# Runs inside the real MicroPython VM (unix port), started by the supervisor
# (host_tools/sim/supervisor.py) as `micropython -i rom.py ARGS`. It is never
# flashed to a board. It:
#   - mounts the meter's own flash directory as "/" behind a jail, so that no
#     path (not even "/..") leaves it, with Pico-like statvfs and ilistdir sizes;
#   - hides the unix-only escape hatches (os.system, vfs.VfsPosix, ...) behind
#     board-like `os` and `vfs` modules;
#   - provides the hardware surface as the built-in module `_vhw` (pins, HAN TX,
#     waveform parameters), backed by pipes to the supervisor;
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
# argv: rom.py ROOT MODE HW_IN_FD HW_OUT_FD HAN_FD FLASH_BYTES
#   MODE is "run" (boot.py + main.py), or "raw" / "repl" (boot.py only: a soft
#   reset from the raw REPL, where a board skips main.py, or a recovery).


def _rom():
    # Imports are locals, so that nothing of the ROM is left in the REPL's
    # globals (a Pico's REPL starts with an empty namespace).
    import sys
    import os
    import vfs
    import select
    import json
    import io
    import time
    import _thread

    rom_path, root, mode = sys.argv[0], sys.argv[1], sys.argv[2]
    fd_in, fd_out, fd_han, flash_bytes = [int(a) for a in sys.argv[3:7]]
    sys.argv[:] = []
    # Hardware channels are opened before the jail hides the host filesystem.
    hw_in = open("/proc/self/fd/%d" % fd_in, "rb")
    hw_out = open("/proc/self/fd/%d" % fd_out, "wb")
    han_out = open("/proc/self/fd/%d" % fd_han, "wb")
    host_vfs = vfs.VfsPosix
    host_os = os
    rom_file = host_os.getenv("MPVM_ROMFS")
    rom_map = host_os.getenv("MPVM_ROMFS_MAP")

    def norm(cwd, path):
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

    class WritePoints:
        # The power-cut campaign's hook (host_tools/reliability/powercut.py), modelled on
        # littlefs's power-loss tests: while the supervisor has armed it, every persisted
        # change to the flash (open for writing, write, rename, remove, mkdir, rmdir) is
        # counted. At the k-th the VM reports the point and stops right there (torn: a write
        # is first half done), and the supervisor cuts the power (SIGKILL) at exactly that
        # point. k < 0 only counts and reports each point; with `match`, only points whose
        # path contains it count. Disarmed (k == 0), it costs one test.
        def __init__(self):
            self.k = 0
            self.n = 0
            self.torn = False
            self.match = ""
            self.cutting = False
            self._lock = _thread.allocate_lock()

        def arm(self, spec):
            with self._lock:
                self.k, self.n = int(spec.get("k", 0)), 0
                self.torn = bool(spec.get("torn", False))
                self.match = str(spec.get("match") or "")
            hw.event({"ev": "cut-armed", "k": self.k})

        def hit(self, op, path, f=None, data=None):
            if not self.k and not self.cutting:
                return
            with self._lock:
                cut = self.cutting
                if not cut and self.match not in path:
                    return
                if not cut:
                    self.n += 1
                    if self.k < 0:
                        hw.event({"ev": "wp", "n": self.n, "op": op, "path": path})
                    elif self.n == self.k:
                        cut = self.cutting = True
                        torn = self.torn and data is not None and len(data) > 1
                        if torn:
                            f.write(data[: len(data) // 2])
                        hw.event({"ev": "cut", "n": self.n, "op": op, "path": path,
                                  "torn": torn})
            while cut:  # until the supervisor's SIGKILL; any other writer stops here too
                time.sleep_ms(1000)

    wp = WritePoints()

    class WFile:
        # A file open for writing while the hook is armed: each write() is a write point.
        def __init__(self, f, path):
            self._f = f
            self._path = path

        def write(self, data):
            wp.hit("write", self._path, self._f, data)
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

    class JailFS:
        # A VFS object: MicroPython's VFS layer calls these with paths
        # relative to the mount point ("/"), already stripped of it.
        BLOCK = 4096

        def __init__(self, root, size):
            # An unrooted VfsPosix, with the root joined here: a rooted one
            # builds both paths of rename() in one shared buffer and fails.
            self._fs = host_vfs()
            self._root = root.rstrip("/")
            self._cwd = "/"
            self._size = size

        def mount(self, readonly, mkfs):
            pass

        def umount(self):
            pass

        def _p(self, path):
            return self._root + norm(self._cwd, path)

        def open(self, path, mode):
            if not wp.k and not wp.cutting:
                return self._fs.open(self._p(path), mode)
            p = norm(self._cwd, path)
            if "w" in mode or "a" in mode or "x" in mode:
                wp.hit("open-" + mode, p)  # creates or truncates
            f = self._fs.open(self._p(path), mode)
            return WFile(f, p) if "r" not in mode or "+" in mode else f

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
            p = norm(self._cwd, path)
            if not self._fs.stat(self._root + p)[0] & 0x4000:
                raise OSError(20)  # ENOTDIR
            self._cwd = p

        def getcwd(self):
            return self._cwd

        def mkdir(self, path):
            wp.hit("mkdir", norm(self._cwd, path))
            self._fs.mkdir(self._p(path))

        def rmdir(self, path):
            wp.hit("rmdir", norm(self._cwd, path))
            self._fs.rmdir(self._p(path))

        def remove(self, path):
            wp.hit("remove", norm(self._cwd, path))
            self._fs.remove(self._p(path))

        def rename(self, old, new):
            wp.hit("rename", norm(self._cwd, old) + ">" + norm(self._cwd, new))
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

    class Hardware:
        # The hardware surface, as the built-in module `_vhw`. board/virtual
        # wraps it behind the same interface as the real boards' adapters.
        def __init__(self):
            self.inputs = {}
            self.outputs = {}  # as the pins were left (a latching relay keeps its state)
            self.wave = {}
            self.meter = {}
            self._poll = select.poll()
            self._poll.register(hw_in, select.POLLIN)

        def poll(self):
            # Apply whatever the supervisor sent (input pins, waveform).
            while self._poll.poll(0):
                line = hw_in.readline()
                if not line:
                    self._poll.unregister(hw_in)
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
                    wp.arm(msg["cut"])

        def output(self, name, value):
            self.outputs[name] = value
            hw_out.write(b'{"out":"%s","v":%d}\n' % (name, value))

        def event(self, msg):
            hw_out.write(json.dumps(msg).encode() + b"\n")

        def han_write(self, data):
            return han_out.write(data)

    class BoardOS:
        # What a Pico's `os` offers: no system(), no getenv(), no Vfs classes.
        sep = "/"
        ilistdir = staticmethod(host_os.ilistdir)
        listdir = staticmethod(host_os.listdir)
        mkdir = staticmethod(host_os.mkdir)
        rmdir = staticmethod(host_os.rmdir)
        remove = staticmethod(host_os.remove)
        unlink = staticmethod(host_os.remove)
        rename = staticmethod(host_os.rename)
        stat = staticmethod(host_os.stat)
        statvfs = staticmethod(host_os.statvfs)
        chdir = staticmethod(host_os.chdir)
        getcwd = staticmethod(host_os.getcwd)
        urandom = staticmethod(host_os.urandom)
        mount = staticmethod(vfs.mount)
        umount = staticmethod(vfs.umount)

        @staticmethod
        def uname():
            return ("virtual", "virtual", "1.29.0", sys.version, "virtual meter (MicroPython unix VM)")

        @staticmethod
        def sync():
            # Writes already reach the host kernel; nothing is cached here.
            pass

    class BoardVFS:
        mount = staticmethod(vfs.mount)
        umount = staticmethod(vfs.umount)
        VfsRom = vfs.VfsRom

    rom_mem = None
    if rom_map:
        import uctypes

        a = rom_map.split()
        rom_mem = uctypes.bytearray_at(int(a[0]), int(a[1]))  # the mapping: no heap, no writes

    class RomIoctl:
        # vfs.rom_ioctl(op, ...), as a port with one ROMFS partition implements it (extmod/
        # vfs.h: 1 count, 2 memory, 3 prepare, 4 write, 5 end, 6 erase block size). Like a
        # board's flash controller it writes the partition in place: the (shared, read-only)
        # mapping then holds what was written, and a power cut mid-write leaves a torn image.
        def __init__(self):
            self._f = None

        def __call__(self, op, *a):
            if op == 1:
                return 1
            if not a or a[0] != 0:
                return -22  # EINVAL: no such partition
            if op == 2:
                return memoryview(rom_mem)
            if op == 6:
                return 4096
            if op == 3:
                off, n = (0, a[1]) if len(a) == 2 else (a[1], a[2])
                if off < 0 or off + n > len(rom_mem):
                    return -22
                if self._f is None:
                    self._f = host_vfs().open(rom_file, "r+b")
                self._f.seek(off)
                for i in range(0, n, 4096):
                    self._f.write(b"\xff" * min(4096, n - i))  # erased flash
                self._f.flush()
                return 4  # smallest write
            if self._f is None:
                return -1  # EPERM: not prepared
            if op == 4:
                if a[1] < 0 or a[1] + len(a[2]) > len(rom_mem):
                    return -22
                self._f.seek(a[1])
                self._f.write(a[2])
                self._f.flush()
                return 0
            if op == 5:
                self._f.close()
                self._f = None
                return 0
            return -22

    vfs.umount("/")
    vfs.mount(JailFS(root, flash_bytes), "/")
    host_os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    if rom_mem is not None:
        BoardVFS.rom_ioctl = RomIoctl()
        try:
            vfs.mount(vfs.VfsRom(rom_mem), "/rom")
            sys.path[2:2] = ["/rom", "/rom/lib"]
        except OSError:
            pass  # an erased partition, or no valid image in it: the filesystem alone
    hw = Hardware()
    # The supervisor sends the pins as they were left (a latching relay) right after it
    # powers the VM on: wait for that first message, so that no pin is read before it.
    hw._poll.poll(2000)
    hw.poll()
    sys.modules["_vhw"] = hw
    sys.modules["os"] = BoardOS
    sys.modules["uos"] = BoardOS
    sys.modules["vfs"] = BoardVFS
    hw.event({"ev": "booted", "mode": mode})

    def run_file(name, g):
        try:
            with open(name) as f:
                src = f.read()
        except OSError:
            return False
        err = None
        try:
            # Compiled before Ctrl-C turns into SIGINT, as a board's pyexec compiles a file
            # before it turns its interrupt character on.
            code = compile(src, name, "exec")
        except Exception as e:  # noqa: BLE001 - a board prints and goes on
            code, err = None, e
        while True:
            finished = False
            try:
                # The supervisor turns Ctrl-C into SIGINT from this event on.
                hw.event({"ev": "file", "name": name, "s": "start"})
                if err is not None:
                    raise err
                exec(code, g)
                finished = True
            except BaseException as e:  # noqa: BLE001 - a board prints and goes on
                buf = io.StringIO()
                sys.print_exception(e, buf)
                text = buf.getvalue()
                if isinstance(e, KeyboardInterrupt) and ('File "%s"' % name) not in text:
                    # The SIGINT landed in these lines, not in the file: before it began (on
                    # a board the interrupt is not on yet, and a Ctrl-C then is a byte), or
                    # after it ended. The file runs as if it had not come (the supervisor
                    # sends a Ctrl-C that had no effect again).
                    if finished:
                        break
                    continue
                # Print it as a board would: without the ROM's own frame.
                for line in text.split("\n"):
                    if line and rom_path not in line:
                        print(line)
                err = type(e).__name__
            break
        hw.event({"ev": "file", "name": name, "s": "end", "err": err})
        return True

    def done():
        # From here on Ctrl-C reaches the REPL (as a byte at its prompt).
        hw.event({"ev": "rom-done"})

    return mode, run_file, done


_mode, _run_file, _done = _rom()
del _rom
_run_file("boot.py", globals())
if _mode == "run":
    _run_file("main.py", globals())
_done()
del _mode, _run_file, _done
