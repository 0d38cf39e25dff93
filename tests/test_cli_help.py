"""Every command's --help shows each option's default and --version, and the heartbeat has one name."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from kakuremichi import __version__
from kakuremichi.agent.cli import build_parser as agent_parser
from kakuremichi.cli import usage
from kakuremichi.control.cli import parser as control_parser
from kakuremichi.dev import build_parser as dev_parser
from kakuremichi.gateway.cli import build_parser as gateway_parser
from kakuremichi.gateway.workers import cpu_count
from kakuremichi.status import build_parser as status_parser
from kakuremichi.tools.cli import build_parser as wg_parser
from tests.deployment import child_env

URL = ["--control-url", "ws://127.0.0.1:9/ws", "--api-key", "k"]


def all_parsers() -> list[argparse.ArgumentParser]:
    wg = wg_parser("kakuremichi wg")
    subcommands = next(a for a in wg._actions if isinstance(a, argparse._SubParsersAction)).choices.values()
    return [control_parser("kakuremichi control"), gateway_parser("kakuremichi gateway"),
            agent_parser("kakuremichi agent"), dev_parser("kakuremichi dev"), wg, *subcommands,
            status_parser("kakuremichi status")]


@pytest.mark.parametrize("parser", all_parsers(), ids=lambda p: p.prog)
def test_every_option_with_a_default_shows_it(parser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert "(default" in formatter._get_help_string(action), action.option_strings
    assert "--version" in parser.format_help()


def test_defaults_read_as_the_values_they_are():
    help_ = " ".join(gateway_parser("kakuremichi gateway").format_help().split())
    assert "public HTTP port (default: 80) [env KAKUREMICHI_HTTP_PORT]" in help_
    assert "UDP port for WireGuard (default: 51820) [env KAKUREMICHI_WIREGUARD_PORT]" in help_
    assert f"(default: the number of CPUs, {cpu_count()} here) [env KAKUREMICHI_WORKERS]" in help_
    assert "--worker-index" not in help_  # the supervisor's business


def test_version_is_in_the_help_and_answers_for_each_command():
    assert "--version" in usage()
    for command in ([], ["control"], ["wg", "ping"]):
        result = subprocess.run([sys.executable, "-m", "kakuremichi", *command, "--version"], capture_output=True,
                                text=True, env=child_env(), timeout=60)
        assert result.returncode == 0 and result.stdout.split()[-1] == __version__


@pytest.mark.parametrize("flag", ["--heartbeat-interval", "--heartbeat"])
def test_gateway_and_agent_take_controls_heartbeat_interval_and_the_old_name(flag):
    gateway = gateway_parser("gateway").parse_args([*URL, "--public-host", "gw", flag, "5"])
    agent = agent_parser("agent").parse_args([*URL, flag, "2.5"])
    assert (gateway.heartbeat_interval, agent.heartbeat_interval) == (5.0, 2.5)


def test_only_the_one_heartbeat_name_is_shown(capsys):
    for parser in (control_parser("control"), gateway_parser("gateway"), agent_parser("agent")):
        help_ = parser.format_help()
        assert "--heartbeat-interval SECONDS" in help_ and "--heartbeat " not in help_
    with pytest.raises(SystemExit):
        agent_parser("agent").parse_args([*URL, "--heartbeat-interval", "0"])
    assert "argument --heartbeat-interval: '0' is not a positive number of seconds" in capsys.readouterr().err
