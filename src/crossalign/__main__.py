"""``python -m crossalign`` (and ``torchrun -m crossalign``) runs the console script."""

import sys

from crossalign.cli.main import main

sys.exit(main())
