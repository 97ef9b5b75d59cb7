"""``python -m pretrain [CONFIG.yaml] [key=value ...]`` (see :mod:`pretrain.run`)."""
from pretrain.run import main

main()
