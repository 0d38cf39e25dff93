import sys

from kakuremichi.cli import main

sys.exit(main())
