"""``python -m aum``: the demo (see :mod:`aum.demo`)."""
from aum.demo import main

main()
