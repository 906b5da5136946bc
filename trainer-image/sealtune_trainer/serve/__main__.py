"""`python -m sealtune_trainer.serve serve|apikey ...` (same as the `sealtune` CLI)."""

import sys

from sealtune_trainer.serve.cli import main

sys.exit(main())
