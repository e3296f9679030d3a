"""`python -m cutrec ...`: the `cutrec` command, as torchrun starts it (`torchrun -m cutrec train ...`)."""

import sys

from cutrec.cli import main

sys.exit(main())
