"""python -m pytier stats PID|--socket PATH [--json]: what the interposer in a
running Python process sees."""

import argparse
import json
import socket
import sys

from pytier._boot import default_socket


def request(path, message, timeout=5.0):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((json.dumps(message) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def mib(n):
    return f"{n / 2**20:.1f} MiB"


def show(stats):
    last = stats.get("last") or {}
    print(f"python {stats['python']}  active: {stats['active']}  passes: {stats['passes']}  "
          f"scanner CPU: {100 * stats['scannerCpuFraction']:.2f}%  GIL held: {stats['gilSecondsTotal'] * 1e3:.1f} ms (start-up)")
    if not last:
        print("no scan finished yet")
        return
    o, b = last["objects"], last["bytes"]
    print(f"arenas {last['arenas']}  pools {last['pools']}  coverage {100 * last['coverage']:.1f}% of {mib(last['usedBytes'])}")
    for cls in ("hot", "warm", "cold"):
        print(f"  {cls:<5} {o[cls]:>10} objects {mib(b[cls]):>12}")
    print(f"pages {last['pages']} ({last['hotPages']} hot), cold bytes on hot pages: {mib(last['coldBytesOnHotPages'])}")
    pw = last.get("pageWrites") or {}
    if pw.get("offReason"):
        print(f"page writes: off ({pw['offReason']})")
    elif pw:
        p = pw["pages"]
        print(f"page writes: {pw['watchedPages']} pages watched: {p['hot']} hot, {p['warm']} warm, {p['cold']} cold; "
              f"{pw['collections']} collections, fault cost {pw['faultSecondsTotal'] * 1e3:.1f} ms "
              f"({pw['faultSecondsPerPage'] * 1e6:.2f} us/page)")
        w = pw["waitedFor"]
        print(f"  collections waited for: the faults {w['faults']}, pytier's CPU {w['cpu']}, "
              f"the scan interval {w['scanInterval']}; they took {pw['cpuSeconds'] * 1e3:.0f} ms of CPU")
    print("top types by cold bytes:")
    for t in last["topTypesByColdBytes"]:
        print(f"  {t['type']:<30} {t['objects']:>10} {mib(t['bytes']):>12}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pytier")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="show what the interposer in a process sees")
    st.add_argument("pid", nargs="?", type=int)
    st.add_argument("--socket", help="control socket path (default: from PID)")
    st.add_argument("--json", action="store_true", help="print raw JSON")
    args = parser.parse_args(argv)
    if args.socket is None and args.pid is None:
        parser.error("give a PID or --socket")
    path = args.socket or default_socket(args.pid)
    try:
        reply = request(path, {"v": 2, "op": "stats"})
    except OSError as error:
        print(f"pytier: cannot reach {path}: {error}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"pytier: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply["stats"], indent=2))
    else:
        show(reply["stats"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
