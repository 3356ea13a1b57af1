"""`python -m panoptic` (also what `torchrun -m panoptic` runs)."""

from .cli import main

raise SystemExit(main())
