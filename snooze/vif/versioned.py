"""Versioned objects: a small core with os-vif's (oslo.versionedobjects') rules, on plain
dataclasses, without oslo.

* An object class has a ``VERSION`` ("MAJOR.MINOR") and typed fields; a field added after 1.0
  says so (``since("1.1")``) and has a default, so that what an older sender sends still reads.
* The wire form is ``{"name", "namespace", "version", "data"}``; nested objects have the same
  form, so a field may hold any registered subclass of its type (a port profile).
* **Back-levelling**: ``to_wire(obj, manifest)`` writes each object at the version the receiver
  knows (``manifest``: object name → its newest version there), leaving out the fields newer
  than that; a class may adjust more in ``back_level``.
* **Refusal**: ``from_wire`` refuses a newer minor version than this side knows, with an error
  naming this side's maximum (upgrade the group managers first, os-vif's rule), another major
  version, an unknown name or namespace, a field unknown to the version sent, a missing one or
  one of the wrong type — each error names the field.
* **Fingerprints**: ``fingerprints()`` hashes every class's version and fields; a test holds the
  expected list, so a field changed without a version bump fails it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, Union

from snooze.codes import CodedError, ErrorCode

__all__ = [
    "NAMESPACE",
    "ObjectError",
    "VersionTooNew",
    "VersionedObject",
    "fingerprints",
    "from_wire",
    "newest_versions",
    "parse_version",
    "register",
    "since",
    "to_wire",
]

NAMESPACE = "snooze.vif"
#: A check of one field's value: None if good, else what is wrong with it.
Check = Callable[[Any], "str | None"]


class ObjectError(CodedError, ValueError):
    """A wire form that does not read (``field`` names what is wrong)."""

    code = ErrorCode.INVALID_VIF_OBJECT


class VersionTooNew(CodedError, ValueError):
    """An object, or a peer, newer than this side knows."""

    code = ErrorCode.VIF_VERSION_TOO_NEW


def parse_version(text: object, field: str = "version") -> tuple[int, int]:
    """``"1.2"`` → ``(1, 2)``; anything else is an ObjectError naming ``field``."""
    if isinstance(text, str) and text.count(".") == 1:
        major, minor = text.split(".")
        if major.isdigit() and minor.isdigit() and len(text) <= 11:
            return int(major), int(minor)
    raise ObjectError(f"{field} must be a version \"MAJOR.MINOR\", not {text!r}", field=field)


def since(version: str, *, check: Check | None = None) -> dict[str, Any]:
    """A field's metadata: the object version that added it, and an optional check."""
    parse_version(version)
    return {"since": version, "check": check}


def checked(check: Check) -> dict[str, Any]:
    """A 1.0 field's metadata with a check of its values."""
    return {"since": "1.0", "check": check}


_REGISTRY: dict[str, type[VersionedObject]] = {}
Obj = TypeVar("Obj", bound="VersionedObject")


def register(cls: type[Obj]) -> type[Obj]:
    """Make ``cls`` readable from the wire under its class name (checked once, here)."""
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"two versioned objects named {name}")
    parse_version(cls.VERSION)
    for f in _fields(cls):
        if parse_version(f.since) > parse_version(cls.VERSION):
            raise TypeError(f"{name}.{f.name} is since {f.since}, newer than {name} {cls.VERSION}")
        if f.since != "1.0" and f.required:
            raise TypeError(f"{name}.{f.name} was added in {f.since}: it needs a default, for senders older than that")
    _REGISTRY[name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a field holds: ``str``, ``int``, ``bool``, ``object`` (of ``cls`` or a subclass),
    ``list`` or ``dict`` (of ``item``), each maybe nullable."""

    base: str
    nullable: bool = False
    cls: type[VersionedObject] | None = None
    item: Kind | None = None

    def describe(self) -> str:
        inner = {"object": f"object:{self.cls.__name__ if self.cls else '?'}",
                 "list": f"list<{self.item.describe() if self.item else '?'}>",
                 "dict": f"dict<str,{self.item.describe() if self.item else '?'}>"}.get(self.base, self.base)
        return ("nullable " if self.nullable else "") + inner


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    name: str
    kind: Kind
    since: str
    required: bool
    check: Check | None


def _kind(hint: Any) -> Kind:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported field type {hint!r}")
        return dataclasses.replace(_kind(args[0]), nullable=True)
    if origin is list:
        (item,) = typing.get_args(hint)
        return Kind("list", item=_kind(item))
    if origin is dict:
        key, item = typing.get_args(hint)
        if key is not str:
            raise TypeError("dict fields have str keys")
        return Kind("dict", item=_kind(item))
    if hint in (str, int, bool):
        return Kind(hint.__name__)
    if isinstance(hint, type) and issubclass(hint, VersionedObject):
        return Kind("object", cls=hint)
    raise TypeError(f"unsupported field type {hint!r}")


_FIELDS: dict[type, list[FieldInfo]] = {}


def _fields(cls: type[VersionedObject]) -> list[FieldInfo]:
    got = _FIELDS.get(cls)
    if got is None:
        hints = typing.get_type_hints(cls)
        got = []
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            got.append(FieldInfo(f.name, _kind(hints[f.name]), f.metadata.get("since", "1.0"), required,
                                 f.metadata.get("check")))
        _FIELDS[cls] = got
    return got


@dataclasses.dataclass(kw_only=True)
class VersionedObject:
    """The base of every versioned object: fields are checked when an object is made."""

    VERSION: ClassVar[str] = "1.0"

    def __post_init__(self) -> None:
        for f in _fields(type(self)):
            _check_value(type(self).__name__, f, getattr(self, f.name))

    def back_level(self, data: dict[str, Any], target: tuple[int, int]) -> None:
        """Adjust ``data`` (already without the fields newer than ``target``) for a receiver
        at ``target``; the fields' ``since`` does the common case, a class overrides this for more."""


def _check_value(owner: str, f: FieldInfo, value: Any, kind: Kind | None = None) -> None:
    kind = kind or f.kind
    where = f"{owner}.{f.name}"
    if value is None:
        if not kind.nullable:
            raise ObjectError(f"{where} may not be null", field=f.name)
        return
    ok = {"str": isinstance(value, str), "int": isinstance(value, int) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "list": isinstance(value, list), "dict": isinstance(value, dict),
          "object": kind.cls is not None and isinstance(value, kind.cls)}[kind.base]
    if not ok:
        want = kind.describe()
        raise ObjectError(f"{where} must be {want}, not {type(value).__name__}", field=f.name)
    if kind.base == "list" and kind.item is not None:
        for item in value:
            _check_value(owner, f, item, kind.item)
        return
    if kind.base == "dict" and kind.item is not None:
        for key, item in value.items():
            if not isinstance(key, str):
                raise ObjectError(f"{where} has a key that is not text", field=f.name)
            _check_value(owner, f, item, kind.item)
        return
    if f.check is not None and kind.base in ("str", "int"):  # a list's items too (a subnet's dns)
        problem = f.check(value)
        if problem:
            raise ObjectError(f"{where}: {problem}", field=f.name)


# -- the wire form -------------------------------------------------------------------------
def to_wire(obj: VersionedObject, manifest: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``obj`` in the wire form, each object at the version ``manifest`` names for its class
    (the receiver's newest; our own where it names none, or a newer one)."""
    cls = type(obj)
    name = cls.__name__
    ours = parse_version(cls.VERSION)
    target = ours
    if manifest and name in manifest:
        theirs = parse_version(manifest[name], field=f"{name} version")
        if theirs[0] != ours[0]:
            raise VersionTooNew(f"{name} {cls.VERSION} cannot be back-levelled to {manifest[name]} (another major version)",
                                field=name)
        target = min(ours, theirs)
    data: dict[str, Any] = {}
    for f in _fields(cls):
        if parse_version(f.since) > target:
            continue  # the receiver's version has no such field
        data[f.name] = _encode(getattr(obj, f.name), manifest)
    if target != ours:
        obj.back_level(data, target)
    return {"name": name, "namespace": NAMESPACE, "version": f"{target[0]}.{target[1]}", "data": data}


def _encode(value: Any, manifest: Mapping[str, str] | None) -> Any:
    if isinstance(value, VersionedObject):
        return to_wire(value, manifest)
    if isinstance(value, list):
        return [_encode(v, manifest) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v, manifest) for k, v in value.items()}
    return value


def from_wire(primitive: Any, expect: type[Obj] = VersionedObject, field: str = "object") -> Obj:  # type: ignore[assignment]
    """The object a wire form describes, checked whole; ``expect``: the class it must be (or
    a subclass of)."""
    if not isinstance(primitive, dict):
        raise ObjectError(f"{field} must be an object {{name, namespace, version, data}}", field=field)
    extra = set(primitive) - {"name", "namespace", "version", "data"}
    if extra:
        raise ObjectError(f"{field} has unknown keys: {', '.join(sorted(map(str, extra)))}", field=field)
    if primitive.get("namespace") != NAMESPACE:
        raise ObjectError(f"{field}.namespace must be {NAMESPACE!r}, not {primitive.get('namespace')!r}",
                          field=f"{field}.namespace")
    name = primitive.get("name")
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ObjectError(f"{field}.name: no object named {name!r}", field=f"{field}.name")
    if not issubclass(cls, expect):
        raise ObjectError(f"{field} must be a {expect.__name__}, not a {name}", field=f"{field}.name")
    version = parse_version(primitive.get("version"), field=f"{field}.version")
    ours = parse_version(cls.VERSION)
    if version[0] != ours[0]:
        raise VersionTooNew(f"{name} {primitive['version']}: this side knows only major version {ours[0]} "
                            f"({name} {cls.VERSION})", field=f"{field}.version")
    if version > ours:
        raise VersionTooNew(f"{name} {primitive['version']} is newer than this side knows (maximum {cls.VERSION}): "
                            f"upgrade group managers before local controllers", field=f"{field}.version")
    data = primitive.get("data")
    if not isinstance(data, dict):
        raise ObjectError(f"{field}.data must be an object", field=f"{field}.data")
    known = {f.name: f for f in _fields(cls) if parse_version(f.since) <= version}
    unknown = set(data) - set(known)
    if unknown:
        raise ObjectError(f"{name} {primitive['version']} has no field {', '.join(sorted(map(str, unknown)))}",
                          field=f"{field}.data.{sorted(map(str, unknown))[0]}")
    values: dict[str, Any] = {}
    for fname, f in known.items():
        if fname in data:
            values[fname] = _decode(data[fname], f.kind, f"{field}.data.{fname}")
        elif f.required:
            raise ObjectError(f"{name}.{fname} is missing", field=f"{field}.data.{fname}")
    obj: Obj = cls(**values)  # __post_init__ checks every value
    return obj


def _decode(raw: Any, kind: Kind, where: str) -> Any:
    if raw is None:
        return None  # the object's own check says whether null is allowed
    if kind.base == "object" and kind.cls is not None:
        return from_wire(raw, kind.cls, field=where)
    if kind.base == "list" and kind.item is not None and isinstance(raw, list):
        return [_decode(v, kind.item, f"{where}[{i}]") for i, v in enumerate(raw)]
    if kind.base == "dict" and kind.item is not None and isinstance(raw, dict):
        return {k: _decode(v, kind.item, f"{where}.{k}") for k, v in raw.items()}
    return raw


# -- versions and fingerprints -------------------------------------------------------------
def newest_versions() -> dict[str, str]:
    """Every registered object's version on this side: the manifest a peer back-levels to."""
    return {name: cls.VERSION for name, cls in sorted(_REGISTRY.items())}


def fingerprint(cls: type[VersionedObject]) -> str:
    """``VERSION-HASH`` of the class's fields (name, type, since, required)."""
    text = ";".join(f"{f.name}:{f.kind.describe()}:{f.since}:{'required' if f.required else 'optional'}"
                    for f in sorted(_fields(cls), key=lambda f: f.name))
    return f"{cls.VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def fingerprints() -> dict[str, str]:
    return {name: fingerprint(cls) for name, cls in sorted(_REGISTRY.items())}
