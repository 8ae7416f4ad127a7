# json for the emulated boards, which have no extmod (MicroPython's json is C there): enough
# for the firmware's records (store.py) and answers. Its cost counts as the meter's in the C6
# run (host_tools/emu/c6.py): on a Pico the C module does this.
def _enc(o, out):
    if o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif isinstance(o, (int, float)):
        out.append(repr(o))
    elif isinstance(o, str):
        out.append('"' + o.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"')
    elif isinstance(o, dict):
        out.append("{")
        first = True
        for k in o:
            if not first:
                out.append(",")
            first = False
            _enc(str(k), out)
            out.append(":")
            _enc(o[k], out)
        out.append("}")
    else:
        out.append("[")
        first = True
        for v in o:
            if not first:
                out.append(",")
            first = False
            _enc(v, out)
        out.append("]")


def dumps(o, separators=None):
    out = []
    _enc(o, out)
    return "".join(out)


def loads(s):
    if isinstance(s, (bytes, bytearray, memoryview)):
        s = bytes(s).decode()
    return eval(s, {"true": True, "false": False, "null": None})
