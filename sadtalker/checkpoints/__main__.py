"""``python -m sadtalker.checkpoints download|verify|list``."""

import logging
import sys

from sadtalker.checkpoints.cli import main

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
sys.exit(main())
