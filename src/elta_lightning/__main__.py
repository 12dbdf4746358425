"""``python -m elta_lightning``: the ``elta`` command, as launchers that start a module run it
(``torchrun --nproc_per_node=4 -m elta_lightning train ...``)."""

import sys

from elta_lightning.cli import main

sys.exit(main())
