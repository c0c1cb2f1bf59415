"""``python -m snooze.cli``: the ``snooze`` command."""

import sys

from snooze.cli import main

sys.exit(main())
