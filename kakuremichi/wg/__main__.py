import sys

from kakuremichi.wg.cli import main

sys.exit(main(prog="python -m kakuremichi.wg"))
