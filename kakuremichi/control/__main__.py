import sys

from kakuremichi.control.cli import main

sys.exit(main(prog="python -m kakuremichi.control"))
