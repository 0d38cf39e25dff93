"""kakuremichi.command: how every daemon runs its Trio main."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.deployment import child_env, free_port


def _frozen_when_main_runs(script: str, tmp_path) -> int:
    """How many objects were frozen when `script` (in a fresh interpreter) reached its main."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60, env=child_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_a_command_freezes_what_importing_made_before_it_runs(tmp_path):
    """What exists before the main starts lives as long as the process: the collector must not walk it
    in each full collection (tens of milliseconds of pause in a busy worker)."""
    assert _frozen_when_main_runs("""
        import gc
        from kakuremichi import command

        async def main():
            print(gc.get_freeze_count())

        command.run("test", main)
    """, tmp_path) > 10_000


def test_control_freezes_it_too(tmp_path):
    """Control runs its own Trio main (its errors are its own), so it freezes on its own path."""
    assert _frozen_when_main_runs(f"""
        import gc
        from kakuremichi.control import cli

        async def main(_settings):
            print(gc.get_freeze_count())

        cli._run = main
        cli.main(["--listen", "127.0.0.1:{free_port()}", "--data-dir", "data", "--admin-token", "kma_" + "t" * 43])
    """, tmp_path) > 10_000
