"""Standalone mode (`node-agent run`) as a user runs it: a real CPython
program under the interposer, the screen, the summary, --json and the
--report picture. NODE_AGENT names the binary, PYTIER_SHIM the shim
(tests/run sets both)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

NODE_AGENT = os.environ.get("NODE_AGENT")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "deploy", "examples", "demo.py")
pytestmark = pytest.mark.skipif(not NODE_AGENT, reason="NODE_AGENT not set; run tests/run")


def run(*args, timeout=120):
    return subprocess.run([NODE_AGENT, "run", *args], capture_output=True, text=True, timeout=timeout)


def test_the_exit_code_is_the_programs():
    r = run("--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no full scan of the program's heap" in r.stdout, "a program shorter than a second is never scanned"


def test_json_report_and_screen_agree_on_what_cxl_would_do(tmp_path):
    report = tmp_path / "run.html"
    r = run("--json", "--every", "1", "--dram-budget", "10%", "--cxl-extra-ns", "100",
            "--report", str(report), "--", sys.executable, DEMO, "6")
    assert r.returncode == 0, r.stderr
    document = json.loads(r.stdout[r.stdout.index("{\n"):])
    assert document["exitCode"] == 0
    looks = document["looks"]
    assert looks, "at least one full scan in 6 s"
    last = looks[-1]
    assert last["objects"]["hot"] > 0, last
    # Without a CXL node: the budget (10% of the heap's block bytes) on
    # DRAM, the rest of the heap's pages on CXL.
    heap_blocks = document["stats"]["last"]["heapBytes"]
    assert abs(last["budgetBytes"] - heap_blocks / 10) <= 4096, (last["budgetBytes"], heap_blocks)
    assert last["dramBytes"] == min(last["budgetBytes"], last["heapBytes"])
    assert last["dramBytes"] + last["cxlBytes"] == last["heapBytes"]
    share = last["dramShare"]
    assert 0 < share <= 1
    assert abs(last["extraNsPerAccess"] - (1 - share) * 100) < 1e-6
    # The picture embeds exactly what the run reported.
    html = report.read_text()
    data = html.split('id="pytier-data">')[1].split("</script>")[0]
    assert json.loads(data) == looks
    assert html.count("objects</title>") == 10 * len(looks), "one heatmap cell per look and bucket"


def test_the_report_renders_as_an_image(tmp_path):
    if not shutil.which("rsvg-convert"):
        pytest.skip("rsvg-convert not installed (Debian: librsvg2-bin; tests/run installs it)")
    svg = tmp_path / "run.svg"
    r = run("--every", "1", "--report", str(svg), "--", sys.executable, DEMO, "4")
    assert r.returncode == 0, r.stderr
    assert f"report written to {svg}" in r.stdout
    png = tmp_path / "run.png"
    rendered = subprocess.run(["rsvg-convert", str(svg), "-o", str(png)], capture_output=True, text=True)
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_budget_is_refused_before_the_program_runs():
    r = run("--dram-budget", "lots", "--", sys.executable, "-c", "print('ran')")
    assert r.returncode == 1 and "ran" not in r.stdout
    assert "--dram-budget \"lots\"" in r.stderr and "512MiB" in r.stderr, r.stderr
