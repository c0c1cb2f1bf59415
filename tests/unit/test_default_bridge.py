"""The bridge of VMs given as vcpus/memory/name is the operator's ``[templates] default_bridge``,
one of the allowed ``[templates] bridges`` (not whichever allowed bridge sorts first)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from snooze import config as cfg
from snooze.domainxml import DomainPolicy
from snooze.virtualcluster import parse_submission

VM = {"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "g"}]}


def _nic(templates: dict[str, object]) -> ET.Element | None:
    policy = DomainPolicy.from_settings(cfg.from_dict({"templates": templates}).templates)
    [spec] = parse_submission(VM, policy)
    return ET.fromstring(spec.xml.split("?>", 1)[-1]).find("devices/interface")


def test_default_is_virbr0() -> None:
    assert cfg.TemplateSettings().default_bridge == "virbr0"
    nic = _nic({})
    assert nic is not None and nic.get("type") == "bridge"
    assert nic.find("source").get("bridge") == "virbr0"  # type: ignore[union-attr]


def test_the_configured_bridge_not_the_first_allowed() -> None:
    nic = _nic({"bridges": ["abr0", "virbr0", "br-guests"], "default_bridge": "br-guests"})
    assert nic is not None and nic.find("source").get("bridge") == "br-guests"  # type: ignore[union-attr]


def test_empty_means_a_network_or_no_card() -> None:
    nic = _nic({"default_bridge": "", "networks": ["guests", "default"]})
    assert nic is not None and nic.get("type") == "network"
    assert nic.find("source").get("network") == "default"  # type: ignore[union-attr]
    assert _nic({"default_bridge": "", "networks": []}) is None


@pytest.mark.parametrize("templates", [
    {"default_bridge": "br0"},  # not allowed by the default bridges (virbr0)
    {"bridges": ["br-guests"]},  # the default virbr0 is no longer allowed: say so, do not guess
])
def test_a_bridge_outside_the_allowed_ones_is_a_configuration_error(templates: dict[str, object]) -> None:
    with pytest.raises(cfg.ConfigError, match=r"^\[templates\] default_bridge = '(br0|virbr0)' is not one of "
                                              r"\[templates\] bridges"):
        cfg.from_dict({"templates": templates})
