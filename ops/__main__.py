"""``python -m ops``: the ``attestmesh`` command line. Owns nothing else; must not hold logic."""

import sys

from ops.cli import main

sys.exit(main())
