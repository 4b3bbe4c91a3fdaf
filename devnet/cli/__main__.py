"""``python -m devnet.cli``: the whole ``attestmesh`` command line (``ops.cli``) with the devnet's verbs.

Owns nothing else; must not hold logic.
"""

import sys

from ops.cli import main

sys.exit(main())
