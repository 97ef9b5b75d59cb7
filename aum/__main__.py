"""``python -m aum``: the demo (see :mod:`aum.demo`); ``python -m aum models``: the registry of released weights
(``aum-models``, :func:`aum.cli.models_main`)."""
import sys

if sys.argv[1:2] == ["models"]:
    from aum.cli import models_main
    sys.exit(models_main(sys.argv[2:]))

from aum.demo import main  # noqa: E402 - only when the demo runs

sys.exit(main())
