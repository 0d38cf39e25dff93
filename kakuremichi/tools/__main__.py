import sys

from kakuremichi.tools.cli import main

sys.exit(main(prog="python -m kakuremichi.tools"))
