"""kakuremichi.command: how every daemon runs its Trio main."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.deployment import child_env


def test_a_command_freezes_what_importing_made_before_it_runs():
    """What exists before the main starts lives as long as the process: the collector must not walk it
    in each full collection (tens of milliseconds of pause in a busy worker)."""
    script = textwrap.dedent("""
        import gc
        from kakuremichi import command

        async def main():
            print(gc.get_freeze_count())

        command.run("test", main)
    """)
    frozen = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env=child_env(), check=True).stdout
    assert int(frozen) > 10_000
