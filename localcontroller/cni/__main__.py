"""``python -m localcontroller.cni``: the plugin (as the ``snooze-cni`` console script)."""

import sys

from localcontroller.cni.plugin import main

sys.exit(main())
