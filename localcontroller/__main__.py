"""``snooze-localcontroller``: run a local controller."""

import sys

from localcontroller.service import main

if __name__ == "__main__":
    sys.exit(main())
