"""``python -m chainop`` is the ``chainop`` command."""

import sys

from chainop.cli import main

sys.exit(main())
