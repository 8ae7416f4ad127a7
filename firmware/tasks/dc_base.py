# The DC security module's shared definitions (tasks/dc_security.py and its feature modules:
# dc_keys, dc_setup, dc_round, dc_recover, dc_rare): limits, files and the Refused error.
# Every module of the DC security module imports from here (and those handling groups from
# tasks/dc_group.py, the request parsers' gid and the member blocks) and none from another, so
# there is no import circle; this module is in RAM with dc_security, the others only while
# needed.
import gc
from micropython import const

KEY_FILE = "/dc_key.bin"  # under the data directory (hw["dir"], default /data)
GROUP_PREFIX = "lopa_"
GROUP_SUFFIX = ".grp"
MIN_N = const(3)
MAX_N = const(512)
CHUNK_MAX = const(25)
HIST = const(16)  # intervals of ciphertexts kept per group
SLICE = const(8)  # PRF evaluations per step (blinding, recovery)
INLINE_MAX = const(32)  # a cold boundary computes a blinding of up to this many keys at once
MAX_GROUPS_CAP = const(16)
RESERVE = const(16384)  # heap left free for the rest of the meter when admitting a group
REF_N = const(50)  # max_groups is counted for groups this size when none is committed
_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
# Once per (gid, t): the table of the next t each group may release (a t below it never leaves
# the meter again, whatever its clock does), and the floor for any other gid (a deleted group's
# next t folds into it, so a group made again under the same gid cannot go back). On flash, or
# in battery-backed RAM where the board has it (lib/nvrec.py): written BEFORE a ciphertext leaves.
REL_FILE = "/dc_released.bin"
REL_FMT = "<409s"  # the table in a fixed size: floor u64, count u8, 16 x (gid_len, gid 16, t u64)
# The neutral registrar's trust anchor and group policy, installed at provisioning over the
# REPL (host_tools/registrar.py): K_reg (32, this meter's key shared with the registrar alone),
# min group size u16, lambda_min f32, epsilon_max f32, sensitivity delta f32 (46 bytes). With it
# a group is committed only with the registrar's tag over the whole member list
# (tasks/dc_setup.py group_commit), and within the privacy budget (tasks/dc_budget.py).
REG_FILE = "/lopa_reg.bin"


class Refused(Exception):
    # A refusal: (code, short text). Raised before any state is touched.
    pass


def _hex(b):
    import binascii

    return binascii.hexlify(b).decode()


def free():
    gc.collect()
    return gc.mem_free()
