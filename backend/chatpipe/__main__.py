"""Allow ``python -m chatpipe``."""

import sys

from chatpipe.cli import main

sys.exit(main())
