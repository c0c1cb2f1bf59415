"""``snooze-groupmanager``: run a group manager (and group leader when elected)."""

import sys

from groupmanager.service import main

if __name__ == "__main__":
    sys.exit(main())
