"""os-vif's errors, as the project's coded errors (``snooze.codes``)."""

from __future__ import annotations

from snooze.codes import CodedError, ErrorCode
from snooze.vif.versioned import ObjectError, VersionTooNew

__all__ = ["LibraryNotInitialized", "NoMatchingPlugin", "ObjectError", "PlugException", "UnplugException", "VersionTooNew"]


class LibraryNotInitialized(CodedError, RuntimeError):
    """``plug``/``unplug`` before ``initialize()``."""

    code = ErrorCode.VIF_LIBRARY_NOT_INITIALIZED


class NoMatchingPlugin(CodedError, LookupError):
    """No plugin (of the host, or loaded) can plug this VIF."""

    code = ErrorCode.NO_MATCHING_VIF_PLUGIN


class PlugException(CodedError, RuntimeError):
    """A plug failed; what it had made is gone again."""

    code = ErrorCode.VIF_PLUG_FAILED


class UnplugException(CodedError, RuntimeError):
    code = ErrorCode.VIF_UNPLUG_FAILED
