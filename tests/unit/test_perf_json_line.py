"""A helper process's JSON result reaches its parent whole: through the file the parent
names (`run_helper`: T069 read 131,072, then 65,536 of ~300,000 bytes through a pipe), or
on stdout, even when that pipe is non-blocking and the parent reads late."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tchat.perf.results import parse_json_line, run_helper

CHILD = """
import os, fcntl
fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_NONBLOCK)
from tchat.perf.results import print_json_line
print_json_line({"samples": [[i, i / 7] for i in range(20000)]})
"""


def test_a_large_result_line_survives_a_non_blocking_pipe_and_a_late_reader() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    time.sleep(0.5)  # the reader is late: the pipe (64 KiB) fills long before
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    result = parse_json_line(out, "child")
    assert len(result["samples"]) == 20000 and len(out) > 4 * 65536


def test_a_cut_line_is_an_error_saying_so() -> None:
    whole = json.dumps({"samples": list(range(1000))}).encode()
    with pytest.raises(RuntimeError, match=r"child: its result line \(100 chars\)"):
        parse_json_line(b"log line\n" + whole[:100], "child")
    with pytest.raises(RuntimeError, match="printed nothing"):
        parse_json_line(b"  \n", "child")


RESULT = """
from tchat.perf.results import print_json_line
print_json_line({"samples": [[i, i / 7] for i in range(20000)]})
"""


async def test_a_helper_writes_its_result_to_the_file_its_parent_named() -> None:
    result = await run_helper([sys.executable, "-c", RESULT], "child")
    assert len(result["samples"]) == 20000  # ~300 KB, as a latency viewer's


async def test_a_helper_without_a_result_is_an_error_saying_so() -> None:
    with pytest.raises(RuntimeError, match="child exited 0 without a result"):
        await run_helper([sys.executable, "-c", "pass"], "child")
    with pytest.raises(RuntimeError, match=r"child failed \(3\): .*boom"):
        await run_helper(
            [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], "child"
        )
