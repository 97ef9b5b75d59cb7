"""``python -m slurm``: the ``aum-sweep`` command."""
import sys

from slurm.cli import main

sys.exit(main())
