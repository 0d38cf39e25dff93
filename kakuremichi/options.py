"""Command-line options that also read `KAKUREMICHI_*` environment variables."""

from __future__ import annotations

import argparse
import os


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose long options default to `KAKUREMICHI_<OPTION>` from the environment.

    `--listen-port` reads `KAKUREMICHI_LISTEN_PORT`; the help text names the variable so users find it.
    A flag given on the command line wins over the environment.
    """

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
