"""``python -m metallmix``: the metallmix command line (see metallmix.cli)."""

import sys

from metallmix.cli import main

sys.exit(main())
