"""Command-line options that also read `KAKUREMICHI_*` environment variables."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help shows its default, before the environment variable; an option whose default is
    nothing (None, off) or whose help already explains it keeps its text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if not action.option_strings or "(default" in help_ or action.default in (None, False, argparse.SUPPRESS):
            return help_
        text, env, variable = help_.rpartition(" [env ")
        return f"{text} (default: %(default)s){env}{variable}" if env else f"{help_} (default: %(default)s)"


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose long options default to `KAKUREMICHI_<OPTION>` from the environment.

    `--listen-port` reads `KAKUREMICHI_LISTEN_PORT`; the help text names the variable so users find it.
    A flag given on the command line wins over the environment.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self._secrets: list[SecretOption] = []
        if self.add_help:  # not on the parent parsers argparse copies from
            from kakuremichi import __version__

            self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def add_secret(self, name: str, help: str, required: bool = False) -> None:
        """`--NAME-file`, `KAKUREMICHI_NAME(_FILE)` and a warned `--NAME`: parse_args sets `args.NAME` to the
        secret and `args.NAME_source` to where it came from."""
        self._secrets.append(SecretOption(self, name, help, required))

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        for secret in self._secrets:
            secret.resolve(self, parsed, args)
        return parsed

    def add_argument(self, *names, **kwargs):  # type: ignore[override]
        long = next((n for n in names if n.startswith("--")), None)
        if long and kwargs.get("action") not in ("help", "version"):
            var = "KAKUREMICHI_" + long[2:].upper().replace("-", "_")
            help_ = kwargs.get("help", "")
            kwargs["help"] = f"{help_} [env {var}]" if help_ != argparse.SUPPRESS else help_
            if var in os.environ:
                value = os.environ[var]
                if kwargs.get("action") == "store_true":
                    kwargs["default"] = value.strip().lower() in ("1", "true", "yes", "on")
                elif kwargs.get("action") == "append":
                    kwargs["default"] = [v for v in value.split(",") if v]
                else:
                    kwargs["default"] = value
                kwargs.pop("required", None)
        return super().add_argument(*names, **kwargs)


def seconds(text: str) -> float:
    """A positive number of seconds (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_heartbeat_interval(parser: EnvArgumentParser) -> None:
    """A gateway's or agent's --heartbeat-interval, the name control uses too; --heartbeat, its name in 0.1,
    still works but is no longer shown."""
    parser.add_argument("--heartbeat-interval", type=seconds, default=30.0, metavar="SECONDS",
                        help="seconds between heartbeats to control (more often if control's "
                             "--heartbeat-interval is shorter)")
    parser.add_argument("--heartbeat", dest="heartbeat_interval", type=seconds, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


class SecretOption:
    """A secret given as `--NAME-file PATH` or the variable KAKUREMICHI_NAME (or its _FILE twin): never on the
    command line, where every user of the machine reads it in `ps`. `--NAME` still works, with a warning."""

    def __init__(self, parser: EnvArgumentParser, name: str, help: str, required: bool = False) -> None:
        self.name, self.required = name, required
        self.flag, self.variable = f"--{name}", "KAKUREMICHI_" + name.upper().replace("-", "_")
        parser.add_argument(self.flag, default=None, help=f"{help}; visible to every user in `ps`: prefer "
                                                          f"{self.variable} or {self.flag}-file")
        parser.add_argument(f"{self.flag}-file", default=None, metavar="PATH",
                            help=f"file holding the {name.replace('-', ' ')} (one line)")

    def resolve(self, parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> None:
        """Set the secret and its source on args; a file's errors and a missing secret are usage errors."""
        attribute = self.name.replace("-", "_")
        path, value = getattr(args, f"{attribute}_file"), getattr(args, attribute)
        given = sys.argv[1:] if argv is None else argv
        if any(a == self.flag or a.startswith(self.flag + "=") for a in given):
            print(f"{parser.prog}: warning: {self.flag} on the command line is visible to every user of this "
                  f"machine (ps, /proc); use {self.variable} or {self.flag}-file", file=sys.stderr)
            source = self.flag
        elif path is not None:
            try:
                value = Path(path).read_text().strip()
            except OSError as exc:
                parser.error(f"{self.flag}-file: cannot read {path}: {exc.strerror or exc}")
            if not value:
                parser.error(f"{self.flag}-file: {path} is empty")
            source = f"{self.flag}-file {path}"
        else:
            source = self.variable
        if value is None and self.required:
            parser.error(f"{self.variable}, {self.flag}-file or {self.flag} is required")
        setattr(args, attribute, value)
        setattr(args, f"{attribute}_source", source)


UDP_OFFLOAD_CHOICES = ("auto", "off")


def add_udp_offload(parser: EnvArgumentParser) -> None:
    """--udp-offload, whose variable KAKUREMICHI_UDP_OFFLOAD is the switch the WireGuard driver reads."""
    parser.add_argument("--udp-offload", choices=UDP_OFFLOAD_CHOICES, default="auto",
                        help="WireGuard's UDP batching on Linux (GSO/GRO, sendmsg/recvmsg); 'off' forces plain "
                             "sendto/recvfrom, the path Windows and macOS take, for kernels or virtual NICs that "
                             "mishandle offload")


def apply_udp_offload(args: argparse.Namespace) -> None:
    """Hand --udp-offload to the driver (and to the worker processes a gateway starts) through the environment."""
    os.environ["KAKUREMICHI_UDP_OFFLOAD"] = args.udp_offload
