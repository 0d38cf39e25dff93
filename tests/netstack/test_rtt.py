"""RttEstimator: RFC 6298's smoothed RTT, variation, clamped RTO and backoff, fed measured round trips."""

from __future__ import annotations

import pytest

from kakuremichi.netstack.rtt import RttEstimator


def test_before_any_sample_the_initial_rto_applies():
    rtt = RttEstimator(1.0, 0.2, 60.0)
    assert rtt.srtt is None and rtt.timeout() == 1.0


def test_the_first_sample_sets_srtt_and_half_of_it_as_variation():
    rtt = RttEstimator(1.0, 0.01, 60.0)
    rtt.sample(0.1)
    assert rtt.srtt == pytest.approx(0.1) and rtt.rttvar == pytest.approx(0.05)
    assert rtt.rto == pytest.approx(0.1 + 4 * 0.05)


def test_later_samples_are_smoothed_with_the_rfc_gains():
    rtt = RttEstimator(1.0, 0.01, 60.0)
    rtt.sample(0.1)
    rtt.sample(0.3)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    assert rtt.rto == pytest.approx(rtt.srtt + 4 * rtt.rttvar)


def test_the_rto_is_clamped_to_min_and_max():
    fast = RttEstimator(1.0, 0.2, 60.0)
    fast.sample(0.001)
    assert fast.rto == 0.2
    slow = RttEstimator(1.0, 0.2, 3.0)
    slow.sample(10.0)
    assert slow.rto == 3.0


def test_backoff_doubles_the_timeout_up_to_max_rto():
    rtt = RttEstimator(1.0, 0.2, 5.0)
    rtt.backoff = 2
    assert rtt.timeout() == 4.0
    rtt.backoff = 3
    assert rtt.timeout() == 5.0
