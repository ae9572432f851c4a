"""``python -m avg_lib COMMAND``: the project's one command line (:mod:`avg_lib.cli`)."""

import sys

from .cli import main

sys.exit(main())
