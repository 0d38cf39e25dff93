"""The structured log line: key=value fields quoted only when they must be, or one JSON object."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from kakuremichi import logs


def _line(fmt: str, **fields) -> str:
    formatter = logs._Formatter(fmt == "json")
    record = logging.LogRecord("kakuremichi.test", logging.INFO, "", 0, "request", None, None)
    record.fields = fields
    return formatter.format(record)


def test_text_fields_are_quoted_only_when_they_would_be_ambiguous():
    line = _line("text", plain="a.test", spaced="two words", quoted='say "hi"', equals="a=b", empty="",
                 number=200, flag=True)
    assert " INFO    kakuremichi.test request " in line
    assert ' plain=a.test ' in line and ' number=200 ' in line and line.endswith(" flag=True")
    assert ' spaced="two words" ' in line and ' quoted="say \\"hi\\"" ' in line
    assert ' equals="a=b" ' in line and ' empty="" ' in line


def test_json_lines_carry_the_fields_as_keys():
    obj = json.loads(_line("json", host="a.test", status=200))
    assert obj["msg"] == "request" and obj["level"] == "info" and obj["logger"] == "kakuremichi.test"
    assert obj["host"] == "a.test" and obj["status"] == 200 and obj["ts"].endswith("Z")


@pytest.fixture
def root_logger():
    """The root logger as it was before a test that calls `logs.setup`."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_lines_are_held_and_written_together_but_a_warning_goes_out_at_once(monkeypatch, root_logger):
    class Stream(io.StringIO):
        writes = 0

        def write(self, text):
            Stream.writes += 1
            return super().write(text)

    stream = Stream()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup("info")
    logger = logging.getLogger("kakuremichi.test.batch")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(logs.write_in_batches)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(100):
            logs.log(logger, logging.INFO, "request", n=n)
        assert stream.getvalue() == ""  # held
        await trio.sleep(logs.BATCH_INTERVAL * 2)
        assert stream.getvalue().count("\n") == 100 and Stream.writes == 1  # one write for all
        logs.log(logger, logging.INFO, "before")
        logs.log(logger, logging.WARNING, "urgent")
        lines = stream.getvalue().splitlines()
        assert lines[-2].endswith("before") and lines[-1].endswith("urgent")  # at once, in order
        logs.log(logger, logging.INFO, "last")
        nursery.cancel_scope.cancel()
    assert stream.getvalue().splitlines()[-1].endswith("last")  # held lines are written when batching ends
    logs.log(logger, logging.INFO, "unbatched")
    assert stream.getvalue().splitlines()[-1].endswith("unbatched")


def test_a_held_line_nobody_else_sees_is_formatted_without_a_record_and_reads_the_same(monkeypatch, root_logger):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup("info")
    logs._handler.batching = True
    made, make_record = [], logging.Logger.makeRecord
    monkeypatch.setattr(logging.Logger, "makeRecord", lambda *args, **kw: made.append(1) or make_record(*args, **kw))
    logger = logging.getLogger("kakuremichi.test.direct")
    logs.log(logger, logging.INFO, "request", host="two words", status=200)
    assert not made  # formatted straight from the fields
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append
    root_logger.addHandler(other)  # another handler (pytest's caplog, say) must still get its record
    logs.log(logger, logging.INFO, "request", host="two words", status=200)
    assert made and seen[0].fields == {"host": "two words", "status": 200}
    logs._handler.flush()
    direct, recorded = (line.split(" ", 1)[1] for line in stream.getvalue().splitlines())
    assert direct == recorded == 'INFO    kakuremichi.test.direct request host="two words" status=200'


def test_sigterm_stops_a_daemon_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    agent = subprocess.Popen([sys.executable, "-m", "kakuremichi.agent", "--control-url", "ws://127.0.0.1:9/ws",
                              "--api-key", "agt_" + "x" * 40, "--data-dir", str(tmp_path)],
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = ""
        while "cannot connect to control" not in seen:  # running (its SIGTERM handler in place), retrying control
            line = agent.stderr.readline()
            assert line, f"the agent ended early: {seen}"
            seen += line
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=20)
        stderr = seen + stderr
    finally:
        agent.kill()
    assert agent.returncode == 0, stderr
    assert "stopping" in stderr and "SIGTERM" in stderr and "Traceback" not in stderr
