"""Reading and writing the kernel's files (sysfs, procfs, cgroupfs), for the
placement benchmark's harness (bench.py) and its DAMOS setup (damos.py)."""


def write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def read(path):
    with open(path) as f:
        return f.read().strip()
