"""`python -m nasaudit` runs the CLI."""

import sys

from nasaudit.cli import main

sys.exit(main())
