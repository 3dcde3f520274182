"""Starts the native interposer in this process, or says why it did not."""

import os
import sys

# Every module imported here stays alive for the program's life, and a full
# gc.collect() traverses its objects: `json` (1900 objects with `re`) is
# imported only when stats are asked for.

# Environment the node agent (or a person) sets.
ENV_CONFIG = "PYTIER_CONFIG"  # JSON settings, as in a TieringPolicy: {"tracking": {...}, ...}
ENV_SOCKET = "PYTIER_SOCKET"  # control socket path; "" disables it
ENV_SOCKET_DIR = "PYTIER_SOCKET_DIR"  # else the socket is <dir>/<container>.<pid>.sock
ENV_CONTAINER = "PYTIER_CONTAINER"  # the container's name (set by the webhook)
ENV_DISABLE = "PYTIER_DISABLE"  # "1": do nothing
NATIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native.so")

_native = None  # the extension module, once tracking runs
_reason = "not started"


def default_socket(pid):
    """<dir>/<container>.<pid>.sock: the node agent tells containers apart by
    the name (in a pod, each container's Python may well be pid 1)."""
    name = os.environ.get(ENV_CONTAINER) or "pytier"
    return os.path.join(os.environ.get(ENV_SOCKET_DIR, "/tmp"), f"{name}.{pid}.sock")


def _free_threaded():
    """Whether this is a free-threaded build, from the build's own flags (a
    3.13t started with PYTHON_GIL=1 runs with the GIL but keeps the
    free-threaded object layout)."""
    return "t" in getattr(sys, "abiflags", "")


def _unsupported():
    """Why this interpreter cannot be tracked, or None. Decided from what the
    interpreter says about itself, before anything in the process changes."""
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not supported (CPython only)"
    if sys.platform != "linux":
        return f"{sys.platform} is not supported (Linux only)"
    if sys.maxsize < 2**63 - 1:
        return "32-bit interpreters are not supported"
    if _free_threaded():
        return ("free-threaded CPython is not supported yet (objects have split reference counts and live in "
                "mimalloc heaps, not pymalloc pools)")
    if hasattr(sys, "gettotalrefcount"):
        return "a debug build of CPython is not supported (its objects carry extra fields)"
    malloc = os.environ.get("PYTHONMALLOC", "")
    if malloc not in ("", "pymalloc"):
        return f"PYTHONMALLOC={malloc} is not supported (pytier reads pymalloc's pools without debug hooks)"
    if sys.flags.dev_mode and not malloc:
        return ("python -X dev (or PYTHONDEVMODE) installs pymalloc's debug hooks, which shift every object: "
                "run without it, or with PYTHONMALLOC=pymalloc")
    if sys.getallocatedblocks() == 0:
        return "this interpreter does not use pymalloc"
    return None


def start():
    global _native, _reason
    if _native is not None:
        return  # sitecustomize ran again in this process
    if os.environ.get(ENV_DISABLE) == "1":
        _reason = f"disabled by {ENV_DISABLE}=1"
        return
    why = _unsupported()
    if why is not None:
        _reason = why
        sys.stderr.write(f"pytier: not active: {why}\n")
        return
    try:
        from pytier import _native as native
    except ImportError as error:
        _reason = f"cannot load {NATIVE}: {error}"
        # An isolated subinterpreter (3.12+) cannot load a single-phase
        # extension module; pytier runs in the process's main interpreter,
        # which has said all there is to say.
        if "subinterpreter" not in str(error):
            sys.stderr.write(f"pytier: not active: {_reason}\n")
        return
    config = os.environ.get(ENV_CONFIG, "").encode()
    socket = os.environ.get(ENV_SOCKET)
    if socket is None:
        socket = default_socket(os.getpid())
    try:
        # Checks the interpreter and the settings before it changes anything:
        # a refused process runs exactly as it would without pytier.
        started_now = native.start(config, sys.hexversion, _free_threaded(), id(type), os.fsencode(socket))
    except RuntimeError as error:
        _reason = str(error)
        sys.stderr.write(f"pytier: not active: {_reason}\n")
        return
    _native = native
    _reason = None
    if started_now:
        import atexit

        atexit.register(native.stop)


def status():
    """(active, reason): reason says why pytier is not active."""
    return (_native is not None and _reason is None, _reason)


def stats():
    """What the interposer sees in this process, or {"active": False, "reason": ...}."""
    if _native is None:
        return {"active": False, "reason": _reason}
    import json

    text = _native.stats()
    if text is None:
        return {"active": False, "reason": "no stats"}
    data = json.loads(text)
    data["allocatedBlocks"] = sys.getallocatedblocks()
    return data


CLASSES = {0: "cold", 1: "warm", 2: "hot", 255: None}


def classify(objects, by="object"):
    """The class ("hot", "warm", "cold", or None if not tracked) of each object,
    as of the last scan: by="object" from its own reference-count changes,
    by="page" from writes to the 4 KiB page it sits on (reads included, since
    using an object writes its reference count)."""
    return classify_ids([id(o) for o in objects], by)


def classify_ids(ids, by="object"):
    """Like classify, by id(): a caller holding only ids does not itself change
    the reference counts it is measuring."""
    if by not in ("object", "page"):
        raise ValueError(f'by must be "object" or "page", not {by!r}')
    if _native is None:
        raise RuntimeError(f"pytier is not active: {_reason}")
    return [CLASSES[c] for c in _native.classify(list(ids), by == "page")]


def page_heat():
    """{page address: heat} for every heap page pytier tracks, as of the last
    scan: the ranking its placement follows (hottest pages to DRAM)."""
    if _native is None:
        raise RuntimeError(f"pytier is not active: {_reason}")
    import struct

    return dict(struct.iter_unpack("=Qf", _native.page_heat()))
