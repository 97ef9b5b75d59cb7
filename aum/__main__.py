"""``python -m aum``: the demo (see :mod:`aum.demo`)."""
import sys

from aum.demo import main

sys.exit(main())
