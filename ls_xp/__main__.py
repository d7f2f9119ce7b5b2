"""``python -m ls_xp`` runs the ``ls-xp`` command line."""

import sys

from ls_xp._tools.cli import main

sys.exit(main())
