"""Containment's bookkeeping: every fault counted, one traceback per kind per interval."""

import logging

from kakuremichi.faults import Contained


def test_counts_every_fault_and_logs_one_per_interval(caplog):
    now = [0.0]
    contained = Contained(logging.getLogger("t.faults"), "netstack receive", interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, "t.faults"):
        for _ in range(1000):
            contained.record(TypeError("bad"), peer="p1")
        contained.record(KeyError("k"))
        now[0] = 11.0
        contained.record(TypeError("bad"))
    assert contained.counts == {"TypeError": 1001, "KeyError": 1}
    assert contained.total == 1002
    lines = [r for r in caplog.records if r.name == "t.faults"]
    assert [r.fields["error"] for r in lines] == ["TypeError", "KeyError", "TypeError"]
    assert lines[0].exc_info and lines[0].fields["peer"] == "p1"
    assert lines[2].fields["suppressed"] == 999  # the ones not logged between the first and this one
