"""pytier: object-level DRAM/CXL memory tiering for Python.

`stats()` returns what the interposer in this process sees; `status()` says
whether it is active and, if not, why. `python -m pytier stats PID` asks a
running process over its control socket.
"""

from pytier._boot import classify, classify_ids, page_heat, stats, status

__all__ = ["classify", "classify_ids", "page_heat", "stats", "status"]
