import sys

from kakuremichi.agent.cli import main

sys.exit(main(prog="python -m kakuremichi.agent"))
