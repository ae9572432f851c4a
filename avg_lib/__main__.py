"""``python -m avg_lib COMMAND``: the project's one command line (:mod:`avg_lib.tools.cli`)."""

import sys

from avg_lib.tools.cli import main

sys.exit(main())
