"""The group-leader role: the group manager that won the election."""

from groupmanager.leader.role import LeaderRole

__all__ = ["LeaderRole"]
