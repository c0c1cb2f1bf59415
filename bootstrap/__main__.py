"""``snooze-bootstrap``: run a bootstrap."""

import sys

from bootstrap.service import main

if __name__ == "__main__":
    sys.exit(main())
