"""`python -m shipper` is `blast-log-shipper`."""

import sys

from shipper.cli import main

sys.exit(main())
