# THE information-flow policy of the meter: the only place that says who may
# talk to whom, with which message kinds, who owns which piece of hardware,
# and which log each task writes. The kernel (kernel.py) enforces it: a
# message whose (sender, receiver, kind) is not listed here is refused and
# written to the security log. Nothing else in the firmware grants a flow.
#
# Who may drive the relay? Only the task "offswitch" (see HARDWARE): it owns
# the relay pin, the local button and the tamper input, and runs on core 1.
# The only message kind that can move it from the main core is "switch", and
# only cs_security may send it; it carries a command that the central system
# authenticated end to end, which the off-switch verifies again with its own
# key ("switch_status" only reads the state, signed with that key). The credit
# task may only ask for a local disconnect at zero credit ("credit_disconnect");
# it never drives the relay itself. (tasks/offswitch.py, docs/OFFSWITCH.md)

# Data flows one way: ADC -> metrology -> dc_security (LoPA) and han;
# WAN bytes -> comm -> cs_security -> (this table) -> task -> cs_security -> comm.
FLOWS = {
    # sender          receiver          kinds
    ("comm", "cs_security"): ("frame_in", "frame_err"),
    ("cs_security", "comm"): ("frame_out",),
    # Verified head-end requests, and their answers (payloads: (ref, code, json)).
    ("cs_security", "metrology"): ("read", "profile", "calibrate"),
    ("metrology", "cs_security"): ("reading", "profile_data", "calibrated"),
    ("cs_security", "clock"): ("time_set",),
    ("clock", "cs_security"): ("time_set_done",),
    # The kernel also owns the console: SEAL/UNSEAL close or open the REPL (lib/seal.py).
    ("cs_security", "kernel"): ("stats", "log_read", "seal"),
    ("kernel", "cs_security"): ("stats_data", "log_data", "seal_data"),
    # LoPA (DC security module): head-end requests, binary (ref, meter id, bytes), and their
    # answers (ref, code, bytes or error text). The private key never leaves dc_security.
    ("cs_security", "dc_security"): ("keygen", "pubkey", "group_begin", "group_keys",
                                     "group_commit", "ciphertext", "recover", "groups",
                                     "group_delete"),
    ("dc_security", "cs_security"): ("lopa_data",),
    # The clock owns time: it marks seconds and interval boundaries.
    ("clock", "metrology"): ("tick",),
    # Each closed interval's import energy (t index, mWh) goes to LoPA, one way only.
    ("metrology", "dc_security"): ("interval_value",),
    # The off-switch (core 1): relay commands only from the central system.
    ("cs_security", "offswitch"): ("switch", "switch_status"),
    ("offswitch", "cs_security"): ("switch_done",),
    ("credit", "offswitch"): ("credit_disconnect",),
    # The relay state (relay, armed, locked), one way: to the HAN and to credit.
    ("offswitch", "han"): ("relay_state",),
    ("offswitch", "credit"): ("relay_state",),
    # Each second's reading (t, V, I, P, import Wh, export Wh), one way: the HAN data diode
    # and prepaid credit; credit's tariff registers go to the HAN.
    ("metrology", "han"): ("reading",),
    ("metrology", "credit"): ("reading",),
    ("credit", "han"): ("tariff_state",),
    # Prepaid credit and tariffs: verified head-end requests (payloads: numbers only).
    ("cs_security", "credit"): ("topup", "tariff", "prepaid", "credit_read"),
    ("credit", "cs_security"): ("credit_data",),
}

# Who may ask what over the WAN (issue 18, docs/SECURITY.md "Roles"). Each principal has its
# own keys (lib/wan.py role_master) and its own command counters; a frame names its role in its
# header's flags, and the MAC under that role's keys authenticates it. cs_security refuses a
# kind that is not listed for the frame's role (POLICY error frame to that role, logged, no
# state change). By WAN kind (lib/wan.py K_*), in role-id order (the flags' role field):
WAN_ROLES = (
    # operator: off-switch, tariffs and prepaid mode, time, seal, calibration, its logs
    ("operator", (0x01,  # INFO (every role: the meter id, the seal, the firmware)
                  0x13, 0x14, 0x15, 0x12,  # TIME_SET, CALIBRATE, STATS, LOGS
                  0x30, 0x31,  # SWITCH, SWITCH_STATUS
                  0x33, 0x35,  # TARIFF, PREPAID
                  0x40, 0x41)),  # SEAL, UNSEAL
    # aggregator: LoPA only; its ciphertexts and recovery answers are blinded, and it may
    # read no individual value (no READ, no PROFILE, no CREDIT)
    ("aggregator", (0x01,  # INFO
                    0x20, 0x21, 0x22, 0x23, 0x24,  # KEYGEN, PUBKEY, GROUP_BEGIN/_KEYS/_COMMIT
                    0x25, 0x26, 0x27, 0x28)),  # CIPHERTEXT, RECOVER, GROUPS, GROUP_DELETE
    # supplier: billing registers (READ), prepaid credit; PROFILE only with consent (below)
    ("supplier", (0x01,  # INFO
                  0x10, 0x34, 0x32,  # READ, CREDIT, TOPUP
                  0x11)),  # PROFILE, only while WAN_CONSENT says so
)
# (role, kind) pairs also allowed above only while the household's consent is given, set
# locally (lib/seal.py consent_given: the button held at power-up; shown on the HAN as
# consent=on|off).
WAN_CONSENT = (("supplier", 0x11),)  # PROFILE: the per-interval load profile

# Hardware each task may use; main.py hands a task only these board objects.
HARDWARE = {
    "metrology": ("adc", "nvram"),
    "clock": ("rtc", "nvram"),
    "credit": ("nvram",),
    "comm": ("wan",),
    "offswitch": ("relay", "button", "tamper"),
    "han": ("han_tx",),
    "cs_security": ("entropy",),
    "dc_security": ("entropy", "nvram"),
    "status": ("led",),
}

# Battery-backed RAM (board.nvram, where the board has it): each task gets a record in its own
# window (offset, bytes, tag) and nothing else of it (lib/nvrec.py: two checksummed slots).
NVRAM = {
    "clock": (0, 64, b"CK"),
    "credit": (64, 192, b"CR"),
    "metrology": (256, 144, b"EN"),  # the energy registers and the last closed interval
    "snapshots": (400, 40, b"NS"),  # the RAM's life: lost (a flat battery) = restore it
    # LoPA: the next t each group may release (tasks/dc_base.py, once per (gid, t))
    "dc_security": (2680, 864, b"DC"),
}
# Rings staged in battery-backed RAM (lib/ringlog.py): file -> (offset, bytes), whole records of
# the ring's size: 38 intervals of the load profile (9.5 h at 15 minutes) and 16 metrology log
# records (its exceptions: with this RAM an ordinary interval close is in the profile only). Their
# history is in the RAM's snapshots: the whole RAM written to the oldest of 8 files (path.0 ..
# path.7) in place when a window is full, and once a day (lib/nvrec.py Snapshots): one flash write
# for everything (flash wear: docs/hardware.md).
NVRAM_RINGS = {
    "/data/profile.bin": (440, 38 * 32),
    "/data/log_metrology.bin": (1656, 16 * 64),
}
NVRAM_SNAPSHOTS = ("/data/nvram", 8)

# Each log is a bounded ring in its own file: flooding one never evicts
# another's records. Tasks not listed (and the kernel) write the security log.
# The kernel copies these tables when it starts: changing them later grants nothing.
LOG_OF = {
    "metrology": "metrology",
    "offswitch": "offswitch",
}
LOGS = {
    # name: (file, capacity in records, record size in bytes)
    "security": ("/data/log_security.bin", 128, 64),
    "metrology": ("/data/log_metrology.bin", 128, 64),
    "offswitch": ("/data/log_offswitch.bin", 128, 64),
}


def allowed(sender, receiver, kind):
    kinds = FLOWS.get((sender, receiver))
    return kinds is not None and kind in kinds


def hardware_of(task):
    return HARDWARE.get(task, ())
