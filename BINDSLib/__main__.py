"""``python -m BINDSLib`` runs the ``binds`` command."""

import sys

from .cli import main

sys.exit(main())
