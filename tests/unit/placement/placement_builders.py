"""Small builders shared by the placement tests (a uniquely named module, not a conftest,
so that it cannot collide with other test folders)."""

from __future__ import annotations

from groupmanager.placement import HostView, PowerState, Thresholds, VMRequest

GIB = 1024.0 * 1024.0  # KiB


def host(
    hid: str,
    cpu: float = 8,
    mem_gib: float = 16,
    *,
    used: tuple[float, float] = (0, 0),
    reserved: tuple[float, float] = (0, 0),
    power: PowerState = PowerState.ACTIVE,
    alive: bool = True,
    networks: frozenset[str] = frozenset(),
) -> HostView:
    return HostView(
        hid,
        (float(cpu), mem_gib * GIB, 0.0, 0.0),
        used=(float(used[0]), used[1] * GIB, 0.0, 0.0),
        reserved=(float(reserved[0]), reserved[1] * GIB, 0.0, 0.0),
        power=power,
        alive=alive,
        networks=networks,
    )


def vm(vid: str, cpu: float = 1, mem_gib: float = 1, **kw: object) -> VMRequest:
    return VMRequest(vid, (float(cpu), mem_gib * GIB, 0.0, 0.0), **kw)  # type: ignore[arg-type]


#: MID = 100 %, so capacity arithmetic in tests is whole numbers.
FULL = Thresholds.uniform(0.0, 1.0, 1.0)
