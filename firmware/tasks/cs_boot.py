# The CS security module's set-up at boot (tasks/cs_security.py): its keys and counters per
# role and the roles' tables, read once, by code that is in RAM only while it runs
# (lib/lazy.py; docs/hardware.md "Memory"). Part of that module.
import store
import wan


def init(cs, hw, keys_path, counters_path):
    # CsSecurity's state, made once at boot on instance cs (its files: cs_security.KEYS,
    # COUNTERS)
    cs._info = hw.get("info", {})
    # per role id: (kinds it may send, kinds it may send only with consent). meter.py hands
    # over policy.py's tables (it drops that module after the build); else read here.
    roles, needs_consent = hw.get("roles"), hw.get("consent", ())
    if roles is None:
        import policy

        roles, needs_consent = policy.WAN_ROLES, policy.WAN_CONSENT
    cs._roles = tuple((kinds, tuple(k for r, k in needs_consent if r == name))
                      for name, kinds in roles)
    n = len(cs._roles)
    k = store.load(keys_path, None)
    cs.meter_id = k["meter"] if k else None
    cs._keys = None
    if k:
        master = bytes.fromhex(k["master"])
        cs._keys = tuple(wan.derive_keys(k["meter"], wan.role_master(k["meter"], master, r))
                         for r in range(n))
    c = store.load(counters_path, {"down": 0, "up": 0})
    # After a reboot every counter up to the reserved marks counts as used. Per role
    # (lists by role id); a file from before roles holds the operator's alone.
    cs._down = _by_role(c["down"], n)
    cs._down_res = list(cs._down)
    cs._up = cs._up_res = c["up"]
    # the last command that may have changed the meter, per role
    cs._changed = _by_role(c.get("chg", 0), n)


def _by_role(v, n):
    if isinstance(v, int):
        v = [v]
    return [v[r] if r < len(v) else 0 for r in range(n)]
