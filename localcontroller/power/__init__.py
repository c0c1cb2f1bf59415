"""Host power saving on the local controller: shutdown and suspend on its group manager's order.

See `localcontroller.power.saver` and docs/power.md.
"""

from localcontroller.power.saver import (
    DEFAULT_COMMANDS,
    DEFAULT_STATE,
    STATES,
    PowerActionError,
    PowerSaver,
)

__all__ = ["DEFAULT_COMMANDS", "DEFAULT_STATE", "STATES", "PowerActionError", "PowerSaver"]
