import sys

from kakuremichi.gateway.cli import main

sys.exit(main(prog="python -m kakuremichi.gateway"))
