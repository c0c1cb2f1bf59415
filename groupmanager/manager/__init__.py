"""The group-manager role: manages a group of local controllers for the current leader."""

from groupmanager.manager.role import ManagerRole

__all__ = ["ManagerRole"]
