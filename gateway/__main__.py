"""``python -m gateway`` is ``patgw``."""

import sys

from .cli import main

sys.exit(main())
