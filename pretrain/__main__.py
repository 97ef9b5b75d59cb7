"""``python -m pretrain [CONFIG.yaml] [key=value ...]`` (see :mod:`pretrain.run`)."""
import sys

from pretrain.run import main

sys.exit(main())
