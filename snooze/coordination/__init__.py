"""ZooKeeper coordination: session state machine, membership, epochs and leader election.

This package is the one boundary to kazoo: the rest of the code never sees a kazoo exception
(they become ``CoordinationError``) nor runs on kazoo's threads (callbacks are handed to the
asyncio loop with ``call_soon_threadsafe``).
"""

from snooze.coordination.election import LeaderElection
from snooze.coordination.zk import CoordinationError, Coordinator, SessionState, once_reachable

__all__ = ["CoordinationError", "Coordinator", "LeaderElection", "SessionState", "once_reachable"]
