"""python3 -m wanbench (from bench/): the same as bench/wan."""

import sys

from .cli import main

sys.exit(main())
