import sys

from adarank.cli import main

sys.exit(main())
