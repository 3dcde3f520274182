"""A small Python service for trying pytier on one machine:

    interposer/build-shim.sh && cargo run -p pytier-node-agent --bin node-agent -- run -- python3 deploy/examples/demo.py

It keeps 200k records; a working set of 1000 of them is re-read and held by
request batches while the rest sits idle. pytier reports the rest cold and,
at default settings, the working set hot from about 2 seconds on (900 to
980 of the 1000 then, all of them by 4 s); without a CXL node it shows
what CXL would do with the heap. The records are checked at exit.
"""

import random
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
records = {i: (i, str(i)) for i in range(200_000)}
end = time.monotonic() + seconds
batch = []
while time.monotonic() < end:
    batch = [records[random.randrange(1000)] for _ in range(500)]  # one "request"
    time.sleep(0.01)
assert all(k == i and s == str(i) for i, (k, s) in records.items()), "records corrupted"
print(f"demo: {len(records)} records intact")
