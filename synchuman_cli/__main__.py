"""``python -m synchuman_cli ...``: the same as the ``synchuman`` console script."""

import sys

from synchuman_cli.main import main

sys.exit(main())
