"""`python -m mmv_core.checkpoints convert|random|inspect` (`cli`)."""

import sys

from mmv_core.checkpoints import cli

sys.exit(cli.main())
