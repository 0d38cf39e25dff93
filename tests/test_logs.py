"""The structured log line: key=value fields quoted only when they must be, or one JSON object."""

from __future__ import annotations

import json
import logging

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
