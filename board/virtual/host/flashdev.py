# The virtual board's flash: the official port's block device over one image file.
#
# Part of the virtual board's ROM image (host_tools/sim/fleet.py rom_image), imported by
# rom.py boot() under a profile whose filesystem is "lfs2" (rp2) or "fat" (stm32). The VM then
# mounts MicroPython's own vfs.VfsLfs2 / vfs.VfsFat on these objects, as the board's port
# mounts them on rp2.Flash / pyb.Flash; only the flash chip below them is modelled here:
#   - the image `flash.bin` in the meter's directory is the flash array: what is programmed or
#     erased reaches it at once (a host write, which a SIGKILL never undoes), so a power cut
#     keeps exactly what the chip holds;
#   - every erase and program stalls the calling VM thread for the chip's time (datasheet
#     figures, docs/virtual-board.md "Flash model"), recorded in hw.stalls as
#     (start_us, end_us) in time.ticks_us() units (the last 16);
#   - erases are counted per erase unit in `flash-wear.bin`, updated in place at each erase
#     (u32 little-endian per unit after a 24-byte header of totals: programs, bytes programmed,
#     stall microseconds); `flash-wear.json` describes the geometry for the host
#     (host_tools/sim/flashwear.py);
#   - every program and erase is a write point of the power-cut campaign (rom.py _wp_hit):
#     "prog" / "erase" with the path "block N" (rp2) or "sector N" (stm32); `torn` programs the
#     first half of the buffer, littlefs's own power-loss model.
# Sources (MicroPython v1.28.0): ports/rp2/rp2_flash.c, ports/rp2/modules/_boot.py,
# ports/stm32/flashbdev.c, storage.c, factoryreset.c, main.c, boards/stm32f405.ld.
import json
import struct
import time

import _thread

# datasheet defaults, overridden by the profile's "fs" entries of the same names
_RP2 = {"bytes": 1408 * 1024, "block": 4096, "erase_ms": 45, "page": 256, "prog_us": 400,
        "rated_cycles": 100000, "chip": "W25Q16JV"}
_STM32 = {"bytes": 112 * 1024, "block": 512, "sectors": [16384, 16384, 16384, 65536],
          "erase_ms": {"16384": 250, "65536": 550}, "prog_us": 16, "rated_cycles": 10000,
          "chip": "STM32F405 internal flash", "idle_ms": 5000, "tick_ms": 512}


def _spec(defaults, fs):
    # The profile's "fs" (host_tools/sim/profiles.py) in this model's terms, over the
    # datasheet defaults: erase times per erase unit, program time per program unit, cycles.
    s = dict(defaults)
    for k in ("type", "bytes", "block", "chip"):
        if k in fs:
            s[k] = fs[k]
    if "cycles" in fs:
        s["rated_cycles"] = fs["cycles"]
    if "program_ms" in fs:
        s["prog_us"] = int(fs["program_ms"] * 1000)
    if "flush_idle_ms" in fs:
        s["idle_ms"] = fs["flush_idle_ms"]
    units, ms = fs.get("erase_bytes"), fs.get("erase_ms")
    if units and ms:
        if "sectors" in defaults:  # stm32: sectors of several sizes, each its erase time
            s["sectors"] = list(units)
            s["erase_ms"] = {str(u): t for u, t in zip(units, ms)}
        else:  # rp2: one erase unit; the page is the program unit
            s["erase_ms"] = ms[0]
            s["page"] = fs.get("program_bytes", s["page"])
    return s


_FF = b"\xff" * 256  # what an erase leaves, written 256 bytes at a time
_HEAD = 24  # flash-wear.bin: programs, bytes programmed, stall us (3 x u64), then u32 per unit
_STALLS = 16


class _Wear:
    # Erase counts per unit and the totals, in place in flash-wear.bin: a power cut loses none.
    def __init__(self, host_vfs, path, units):
        self._buf = bytearray(_HEAD)
        self._u = bytearray(4)
        try:
            self._f = host_vfs.open(path, "r+b")
            self._f.readinto(self._buf)
        except OSError:
            self._f = host_vfs.open(path, "w+b")
            self._f.write(bytes(_HEAD + 4 * units))
        self.progs, self.prog_bytes, self.stall_us = struct.unpack("<QQQ", self._buf)

    def erased(self, unit, stall_us):
        f, u = self._f, self._u
        f.seek(_HEAD + 4 * unit)
        f.readinto(u)
        struct.pack_into("<I", u, 0, struct.unpack("<I", u)[0] + 1)
        f.seek(_HEAD + 4 * unit)
        f.write(u)
        self.stall_us += stall_us
        self._head()

    def programmed(self, n, stall_us):
        self.progs += 1
        self.prog_bytes += n
        self.stall_us += stall_us
        self._head()

    def _head(self):
        struct.pack_into("<QQQ", self._buf, 0, self.progs, self.prog_bytes, self.stall_us)
        self._f.seek(0)
        self._f.write(self._buf)


class _Flash:
    # What both chips share: the image, the wear file, stalls and write points.
    def __init__(self, hw, host_vfs, mdir, spec, units, wp_hit):
        self.hw = hw
        self.spec = spec
        self._wp = wp_hit
        self._rung = hw.bell[0] if getattr(hw, "bell", None) is not None else 0
        if not hasattr(hw, "stalls"):
            hw.stalls = []
        path = mdir + "/flash.bin"
        size = spec["bytes"]
        self.fresh = False
        try:
            self.img = host_vfs.open(path, "r+b")
            if host_vfs.stat(path)[6] != size:
                raise OSError(22)
        except OSError:
            # a blank chip: erased (all ones), no filesystem; its wear starts at zero
            self.fresh = True
            self.img = host_vfs.open(path, "w+b")
            for _ in range(size // 256):
                self.img.write(_FF)
            try:
                host_vfs.remove(mdir + "/flash-wear.bin")
            except OSError:
                pass
        self.wear = _Wear(host_vfs, mdir + "/flash-wear.bin", units)
        try:
            host_vfs.stat(mdir + "/flash-wear.json")
        except OSError:
            self.fresh = True  # an image the host put in place (a bench clone): described now
        if self.fresh:
            with host_vfs.open(mdir + "/flash-wear.json", "w") as f:
                f.write(json.dumps({
                    "type": spec["type"], "bytes": size, "units": self.unit_sizes(),
                    "unit": self.UNIT, "rated_cycles": spec["rated_cycles"],
                    "chip": spec.get("chip", ""), "created": time.time(),
                    "created_sim": hw.meter.get("sim_time")}))

    def _arm_check(self):
        # The power-cut campaign arms the write points through the hardware pipe, which the
        # firmware polls; a write polls it too when a message waits, so that a meter without
        # firmware (tests_device/test_flashmodel.py) can be armed. Not a board behaviour. The
        # doorbell (rom.py hw.bell) says so without a system call: poll(0) raises a pending
        # KeyboardInterrupt (extmod/modselect.c), which must wait until the operation is over.
        if self._wp is None:
            return
        bell = getattr(self.hw, "bell", None)
        if bell is None:
            if self.hw._poll.poll(0):
                self.hw.poll()
        elif bell[0] != self._rung:
            self._rung = bell[0]
            self.hw.poll()

    def _stall(self, us):
        # The chip is busy and the CPU waits with interrupts off. A Ctrl-C that comes meanwhile
        # stays pending and is raised by the firmware's next check once the operation is over,
        # as on a board: this module is machine code (fleet.py ROM_NATIVE: no check at its
        # jumps) and time.sleep_us is usleep(), which a signal ends early without raising
        # (ports/unix/mphalport.h, v1.28.0). time.sleep raised it here, inside littlefs's or
        # FatFs's C, and this caught and dropped it (a meter writing its logs lost one Ctrl-C
        # in four, and the supervisor sent it again only 2 s later).
        t0 = time.ticks_us()
        end = time.ticks_add(t0, us)
        while True:
            left = time.ticks_diff(end, time.ticks_us())
            if left <= 0:
                break
            time.sleep_us(left)
        st = self.hw.stalls
        st.append((t0, time.ticks_us()))
        if len(st) > _STALLS:
            st.pop(0)
        return time.ticks_diff(st[-1][1], t0)


class RP2Flash(_Flash):
    # rp2.Flash (ports/rp2/rp2_flash.c) over the image: 4096-byte blocks; writeblocks() without
    # an offset erases the blocks first, with one programs only; ioctl 6 erases one block.
    # littlefs (the extended interface) erases and programs separately.
    UNIT = "block"

    def __init__(self, hw, host_vfs, mdir, spec, wp_hit):
        s = _spec(_RP2, spec)
        self.block = s["block"]
        self.count = s["bytes"] // self.block
        super().__init__(hw, host_vfs, mdir, s, self.count, wp_hit)
        self._erase_us = int(s["erase_ms"] * 1000)
        self._page = s["page"]
        self._prog_us = s["prog_us"]

    def unit_sizes(self):
        return [[self.block, self.count]]

    def readblocks(self, n, buf, off=0):
        self.img.seek(n * self.block + off)
        self.img.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        self._arm_check()
        if off is None:
            for i in range(len(buf) // self.block):
                self._erase(n + i)
            off = 0
        self._program(n * self.block + off, buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.count
        if op == 5:  # block size
            return self.block
        if op == 6:  # erase
            self._arm_check()
            self._erase(arg)
            return 0
        if op in (1, 2, 3):  # init, deinit, sync: nothing is cached
            return 0
        return None

    def _erase(self, n):
        self.img.seek(n * self.block)
        if self._wp is not None:
            self._wp("erase", "block %d" % n)
        for _ in range(self.block // 256):
            self.img.write(_FF)
        self.wear.erased(n, self._stall(self._erase_us))

    def _program(self, addr, buf):
        self.img.seek(addr)
        if self._wp is not None:
            self._wp("prog", "block %d" % (addr // self.block), self.img, buf)
        self.img.write(buf)
        pages = (len(buf) + self._page - 1) // self._page
        self.wear.programmed(len(buf), self._stall(pages * self._prog_us))


class STM32Flash(_Flash):
    # pyb.Flash over the F405's internal flash (ports/stm32/flashbdev.c, storage.c): 512-byte
    # blocks over sectors 1-4 (16, 16, 16 and 64 KiB, boards/stm32f405.ld FLASH_FS), written
    # into a one-sector RAM cache (the board's 64 KiB CCM RAM). The cache goes back to flash by
    # the port's flash IRQ, which the SysTick pends every 512 ms: its first run after a write
    # erases the cached sector, a later one programs the cache back once no write came for
    # 5 s; a sync (os.sync, a file's close/flush, ioctl 3) or a write to another sector forces
    # both at once. The cache is a file that is never read after a power cut, as RAM: what
    # only it holds is lost, and a cut after the erase loses the sector's old contents too.
    UNIT = "sector"

    def __init__(self, hw, host_vfs, mdir, spec, wp_hit):
        s = _spec(_STM32, spec)
        self.block = s["block"]
        self.sectors = s["sectors"]
        self.count = s["bytes"] // self.block
        super().__init__(hw, host_vfs, mdir, s, len(self.sectors), wp_hit)
        starts = []
        a = 0
        for n in self.sectors:
            starts.append(a)
            a += n
        self._starts = starts
        self._erase_ms = s["erase_ms"]
        self._prog_us = s["prog_us"]  # per 32-bit word
        self._idle_ms = s["idle_ms"]
        self._tick_s = s["tick_ms"] / 1000
        # (filled by _load() before it is read: nothing of it is kept across a power-up)
        self._cache = host_vfs.open(mdir + "/flash-cache.bin", "w+b")
        self._blk = bytearray(self.block)
        self._lock = _thread.allocate_lock()
        self._ticker = False
        self._init()

    def _init(self):
        self._sec = -1  # the sector the cache holds
        self._dirty = self._erased = self._force = False
        self._last_write = 0

    def unit_sizes(self):
        out = []
        for n in self.sectors:
            if out and out[-1][0] == n:
                out[-1][1] += 1
            else:
                out.append([n, 1])
        return out

    def _sector(self, addr):
        i = len(self._starts) - 1
        while self._starts[i] > addr:
            i -= 1
        return i

    def readblocks(self, n, buf, off=0):
        mv = memoryview(buf)
        addr = n * self.block + off
        with self._lock:
            i = 0
            while i < len(mv):
                s = self._sector(addr + i)
                end = min(len(mv), self._starts[s] + self.sectors[s] - addr)
                if s == self._sec:
                    self._cache.seek(addr + i - self._starts[s])
                    self._cache.readinto(mv[i:end])
                else:
                    self.img.seek(addr + i)
                    self.img.readinto(mv[i:end])
                i = end

    def writeblocks(self, n, buf, off=0):
        self._arm_check()
        mv = memoryview(buf)
        addr = n * self.block + off
        with self._lock:
            i = 0
            while i < len(mv):
                s = self._sector(addr + i)
                end = min(len(mv), self._starts[s] + self.sectors[s] - addr)
                if s != self._sec:
                    self._sync()
                    self._load(s)
                self._dirty = True
                self._last_write = time.ticks_ms()
                self._cache.seek(addr + i - self._starts[s])
                self._cache.write(mv[i:end])
                i = end
        if not self._ticker:
            self._ticker = True
            _thread.start_new_thread(self._tick_loop, ())

    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return self.block
        if op in (2, 3):  # deinit, sync: storage_flush()
            with self._lock:
                self._sync()
            return 0
        if op == 1:
            with self._lock:
                self._init()
            return 0
        if op == 6:  # FAT never erases through the block device
            return 0
        return None

    def _load(self, s):
        # the sector into the cache, 512 bytes at a time through one buffer
        self.img.seek(self._starts[s])
        self._cache.seek(0)
        for _ in range(self.sectors[s] // self.block):
            self.img.readinto(self._blk)
            self._cache.write(self._blk)
        self._sec = s

    def _sync(self):
        if self._dirty:
            self._force = True
            while self._dirty:
                self._irq()

    def _irq(self):
        # flashbdev.c flash_bdev_irq_handler(): erase first, then program when forced or idle
        if not self._dirty:
            return
        s = self._sec
        if not self._erased:
            self.img.seek(self._starts[s])
            if self._wp is not None:
                self._wp("erase", "sector %d" % s)
            for _ in range(self.sectors[s] // 256):
                self.img.write(_FF)
            ms = self._erase_ms
            ms = ms.get(str(self.sectors[s]), 1000) if isinstance(ms, dict) else ms
            self._erased = True
            self.wear.erased(s, self._stall(int(ms * 1000)))
            return
        if self._force or time.ticks_diff(time.ticks_ms(), self._last_write) >= self._idle_ms:
            n = self.sectors[s]
            self.img.seek(self._starts[s])
            if self._wp is not None:
                self._wp("prog", "sector %d" % s, self, range(n))
            self._program(n)
            self.wear.programmed(n, self._stall(n // 4 * self._prog_us))
            self._dirty = self._erased = self._force = False

    def write(self, r):
        # the torn write point's half program (rom.py _wp_hit passes range(n)[:n // 2])
        self._program(len(r))

    def _program(self, n):
        # the cache's first n bytes onto the erased sector (the image is positioned at it)
        self._cache.seek(0)
        for _ in range(n // self.block):
            self._cache.readinto(self._blk)
            self.img.write(self._blk)

    def _tick_loop(self):
        # the SysTick's storage dispatch (storage.c): the flash IRQ every 512 ms
        while True:
            time.sleep(self._tick_s)
            with self._lock:
                self._irq()


FACTORY = (
    ("boot.py", "# boot.py -- run on boot to configure USB and filesystem\r\n"
                "# Put app code in main.py\r\n\r\nimport machine\r\nimport pyb\r\n"
                "#pyb.main('main.py') # main script to run after this one\r\n"
                "#pyb.usb_mode('VCP+MSC') # act as a serial and a storage device\r\n"
                "#pyb.usb_mode('VCP+HID') # act as a serial device and a mouse\r\n"),
    ("main.py", "# main.py -- put your code here!\r\n"),
    ("README.txt", "This is a MicroPython board\r\n\r\nYou can get started right away by "
                   "writing your Python code in 'main.py'.\r\n\r\nFor online docs please "
                   "visit http://docs.micropython.org/\r\n"),
)


class SDCard:
    # pyb.SDCard / machine.SDCard (ports/stm32/sdcard.c) over the card image `sd.bin`:
    # 512-byte blocks (SDCARD_BLOCK_SIZE), ioctl 4 the capacity in blocks, 5 the block size,
    # 3 (sync) nothing to do: the port caches nothing, every write is a command to the card.
    # The card's controller does its own wear levelling, so no erase is modelled: each
    # writeblocks() goes straight to the file (a power cut keeps what was written) and stalls
    # the caller for the card's busy time (write_ms per command, the profile's "sd"), and is
    # counted: write commands and blocks written, two u64 little-endian in `sd-writes.bin`,
    # updated in place (host_tools/sim/flashimg.py sd_writes). A blank card (a new file) reads
    # as zeros.
    def __init__(self, hw, host_vfs, mdir, sd, wp_hit):
        self.hw = hw
        self._wp = wp_hit
        self.count = sd["bytes"] // 512
        path = mdir + "/sd.bin"
        try:
            self.img = host_vfs.open(path, "r+b")
            if host_vfs.stat(path)[6] != sd["bytes"]:
                raise OSError(22)
        except OSError:
            self.img = host_vfs.open(path, "w+b")  # a new card: sparse, all zeros
            self.img.seek(sd["bytes"] - 1)
            self.img.write(b"\0")
            try:
                host_vfs.remove(mdir + "/sd-writes.bin")
            except OSError:
                pass
        self._us = int(sd.get("write_ms", 1.0) * 1000)
        self._n = bytearray(16)
        try:
            self._cnt = host_vfs.open(mdir + "/sd-writes.bin", "r+b")
            self._cnt.readinto(self._n)
        except OSError:
            self._cnt = host_vfs.open(mdir + "/sd-writes.bin", "w+b")
            self._cnt.write(self._n)
        if not hasattr(hw, "stalls"):
            hw.stalls = []

    def readblocks(self, n, buf, off=0):
        self.img.seek(n * 512 + off)
        self.img.readinto(buf)

    def writeblocks(self, n, buf, off=0):
        self.img.seek(n * 512 + off)
        if self._wp is not None:
            self._wp("prog", "sd block %d" % n, self.img, buf)
        self.img.write(buf)
        n = self._n
        struct.pack_into("<QQ", n, 0, struct.unpack_from("<Q", n, 0)[0] + 1,
                         struct.unpack_from("<Q", n, 8)[0] + len(buf) // 512)
        self._cnt.seek(0)
        self._cnt.write(n)
        _Flash._stall(self, self._us)

    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return 512
        if op in (1, 2, 3):
            return 0
        return None


def mount(hw, host_vfs, mdir, spec, wp_hit, sd=None):
    # Mount the board's filesystems as its port does at boot; returns (cwd, flash device,
    # sys.path).
    # rp2 (_boot.py): VfsLfs2(progsize=256) on "/", formatted when it does not mount.
    # stm32 (main.c init_flash_fs, factoryreset.c): VfsFat on "/flash" (the cwd); when there
    # is no filesystem, a fresh FAT (FM_FAT: mkfs, as vfs.VfsFat.mkfs) with the factory files.
    # Then, with a card in the slot (sd: the profile's "sd", bytes > 0) and no file SKIPSD on
    # the flash (main.c, MICROPY_HW_SDCARD_MOUNT_AT_BOOT), the card's FAT on "/sd", which
    # becomes the cwd (boot.py and main.py are run from it); sys.path is "", ".frozen", "/sd",
    # "/sd/lib", "/flash", "/flash/lib" (py/runtime.c mp_init, main.c). A card that does not
    # mount is formatted here, as its user would format a blank card (vfs.VfsFat.mkfs).
    import vfs

    if spec["type"] == "lfs2":
        dev = RP2Flash(hw, host_vfs, mdir, spec, wp_hit)
        try:
            fs = vfs.VfsLfs2(dev, progsize=256)
        except OSError:
            vfs.VfsLfs2.mkfs(dev, progsize=256)
            fs = vfs.VfsLfs2(dev, progsize=256)
        vfs.mount(fs, "/")
        return "/", dev, ["", ".frozen", "/lib"]
    dev = STM32Flash(hw, host_vfs, mdir, spec, wp_hit)
    try:
        fs = vfs.VfsFat(dev)
        vfs.mount(fs, "/flash")
    except OSError:
        vfs.VfsFat.mkfs(dev)
        fs = vfs.VfsFat(dev)
        vfs.mount(fs, "/flash")
        for name, text in FACTORY:
            with open("/flash/" + name, "w") as f:
                f.write(text)
    path = ["", ".frozen", "/flash", "/flash/lib"]
    if not sd or sd.get("bytes", 0) <= 0:
        return "/flash", dev, path
    try:
        import os

        os.stat("/flash/SKIPSD")
        return "/flash", dev, path
    except OSError:
        pass
    card = SDCard(hw, host_vfs, mdir, sd, wp_hit)
    try:
        vfs.mount(vfs.VfsFat(card), "/sd")
    except OSError:
        vfs.VfsFat.mkfs(card)
        vfs.mount(vfs.VfsFat(card), "/sd")
    return "/sd", dev, ["", ".frozen", "/sd", "/sd/lib", "/flash", "/flash/lib"]
