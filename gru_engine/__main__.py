"""``python -m gru_engine``: the gru-engine command line."""

import sys

from .cli import main

sys.exit(main())
