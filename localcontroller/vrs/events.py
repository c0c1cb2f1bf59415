"""Nuage VRS's entity events and states: libvirt's lifecycle event types and details, and
libvirt's domain states and reasons, with their numbers (what ``Nuage_VM_Table`` stores).

One enum per event category, so that an event is a (category, detail) pair that exists: an
impossible pair (``Started``/``Destroyed``) is refused here, before anything is written (the
original SDK checked an event only by its numeric range). ``after(event)`` is the entity's
state and reason once the event happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["EVENT_DETAILS", "EntityType", "Event", "EventCategory", "InvalidEvent", "State", "after"]


class InvalidEvent(ValueError):
    pass


class EntityType(IntEnum):
    """``Nuage_VM_Table.type``: what the entity is."""

    VM = 0
    CONTAINER = 1


class EventCategory(IntEnum):
    """libvirt's ``virDomainEventType``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class DefinedDetail(IntEnum):
    ADDED = 0
    UPDATED = 1
    RENAMED = 2
    FROM_SNAPSHOT = 3


class UndefinedDetail(IntEnum):
    REMOVED = 0
    RENAMED = 1


class StartedDetail(IntEnum):
    BOOTED = 0
    MIGRATED = 1
    RESTORED = 2
    FROM_SNAPSHOT = 3
    WAKEUP = 4


class SuspendedDetail(IntEnum):
    PAUSED = 0
    MIGRATED = 1
    IOERROR = 2
    WATCHDOG = 3
    RESTORED = 4
    FROM_SNAPSHOT = 5
    API_ERROR = 6
    POSTCOPY = 7
    POSTCOPY_FAILED = 8


class ResumedDetail(IntEnum):
    UNPAUSED = 0
    MIGRATED = 1
    FROM_SNAPSHOT = 2
    POSTCOPY = 3
    POSTCOPY_FAILED = 4


class StoppedDetail(IntEnum):
    SHUTDOWN = 0
    DESTROYED = 1
    CRASHED = 2
    MIGRATED = 3
    SAVED = 4
    FAILED = 5
    FROM_SNAPSHOT = 6


class ShutdownDetail(IntEnum):
    FINISHED = 0
    GUEST = 1
    HOST = 2


class PMSuspendedDetail(IntEnum):
    MEMORY = 0
    DISK = 1


class CrashedDetail(IntEnum):
    PANICKED = 0
    CRASHLOADED = 1


#: Each category's details.
EVENT_DETAILS: dict[EventCategory, type[IntEnum]] = {
    EventCategory.DEFINED: DefinedDetail,
    EventCategory.UNDEFINED: UndefinedDetail,
    EventCategory.STARTED: StartedDetail,
    EventCategory.SUSPENDED: SuspendedDetail,
    EventCategory.RESUMED: ResumedDetail,
    EventCategory.STOPPED: StoppedDetail,
    EventCategory.SHUTDOWN: ShutdownDetail,
    EventCategory.PMSUSPENDED: PMSuspendedDetail,
    EventCategory.CRASHED: CrashedDetail,
}


class State(IntEnum):
    """libvirt's ``virDomainState`` (Nuage's entity states)."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


# The reasons (libvirt's virDomain*Reason; Nuage's sub-states) the events below lead to.
RUNNING_BOOTED, RUNNING_MIGRATED, RUNNING_RESTORED, RUNNING_FROM_SNAPSHOT, RUNNING_UNPAUSED, RUNNING_WAKEUP = 1, 2, 3, 4, 5, 8
PAUSED_USER, PAUSED_MIGRATION = 1, 2
SHUTDOWN_USER = 1
SHUTOFF_UNKNOWN, SHUTOFF_SHUTDOWN, SHUTOFF_DESTROYED, SHUTOFF_CRASHED, SHUTOFF_MIGRATED, SHUTOFF_SAVED, SHUTOFF_FAILED = 0, 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class Event:
    """A (category, detail) pair that exists."""

    category: EventCategory
    detail: IntEnum

    @classmethod
    def of(cls, category: int, detail: int) -> Event:
        """From libvirt's numbers; InvalidEvent for a pair that does not exist."""
        try:
            cat = EventCategory(category)
        except ValueError:
            raise InvalidEvent(f"no event category {category}") from None
        details = EVENT_DETAILS[cat]
        try:
            return cls(cat, details(detail))
        except ValueError:
            raise InvalidEvent(f"{cat.name} has no detail {detail} (it has {', '.join(d.name for d in details)})") from None

    def __post_init__(self) -> None:
        if not isinstance(self.detail, EVENT_DETAILS[self.category]):
            raise InvalidEvent(f"{self.category.name}/{getattr(self.detail, 'name', self.detail)} is not an event")

    def __str__(self) -> str:
        return f"{self.category.name.title()}/{self.detail.name.title()}"


def after(event: Event) -> tuple[State, int]:
    """The entity's state and reason once ``event`` happened."""
    c, d = event.category, event.detail
    if c is EventCategory.STARTED:
        return State.RUNNING, {StartedDetail.BOOTED: RUNNING_BOOTED, StartedDetail.MIGRATED: RUNNING_MIGRATED,
                               StartedDetail.RESTORED: RUNNING_RESTORED, StartedDetail.FROM_SNAPSHOT: RUNNING_FROM_SNAPSHOT,
                               StartedDetail.WAKEUP: RUNNING_WAKEUP}[StartedDetail(d)]
    if c is EventCategory.RESUMED:
        return State.RUNNING, RUNNING_MIGRATED if d is ResumedDetail.MIGRATED else RUNNING_UNPAUSED
    if c is EventCategory.SUSPENDED:
        return State.PAUSED, PAUSED_MIGRATION if d is SuspendedDetail.MIGRATED else PAUSED_USER
    if c is EventCategory.STOPPED:
        return State.SHUTOFF, {StoppedDetail.SHUTDOWN: SHUTOFF_SHUTDOWN, StoppedDetail.DESTROYED: SHUTOFF_DESTROYED,
                               StoppedDetail.CRASHED: SHUTOFF_CRASHED, StoppedDetail.MIGRATED: SHUTOFF_MIGRATED,
                               StoppedDetail.SAVED: SHUTOFF_SAVED, StoppedDetail.FAILED: SHUTOFF_FAILED,
                               StoppedDetail.FROM_SNAPSHOT: SHUTOFF_UNKNOWN}[StoppedDetail(d)]
    if c is EventCategory.SHUTDOWN:
        return State.SHUTDOWN, SHUTDOWN_USER
    if c is EventCategory.PMSUSPENDED:
        return State.PMSUSPENDED, 0
    if c is EventCategory.CRASHED:
        return State.CRASHED, 0
    return State.SHUTOFF, SHUTOFF_UNKNOWN  # defined or undefined: not running
