"""Reading the IPMI driver's ipmitool-style options."""

from __future__ import annotations

import socket
import struct
import threading

import pyghmi.exceptions as pyghmi_exceptions
import pytest

from groupmanager.power import (
    IpmiOptions,
    IpmiWakeup,
    WakeupError,
    WakeupSettingsError,
    make_wakeup_driver,
    parse_ipmi_options,
)
from groupmanager.power import ipmi as ipmi_module
from groupmanager.power.ipmi import _PyghmiFailure


def test_original_snooze_form() -> None:
    options = parse_ipmi_options("-I lanplus -H 10.0.0.7 -U admin -P s3cret")
    assert options == IpmiOptions(host="10.0.0.7", port=623, user="admin", password="s3cret")


def test_port_and_values_attached_as_getopt_allows() -> None:
    options = parse_ipmi_options("-Ilanplus -H127.0.0.1 -p 6230 -Uadmin -P'two words'")
    assert (options.host, options.port, options.user, options.password) == (
        "127.0.0.1",
        6230,
        "admin",
        "two words",
    )


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPMI_PASSWORD", "from-env")
    assert parse_ipmi_options("-I lanplus -H bmc -U u -E").password == "from-env"


def test_password_from_environment_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPMI_PASSWORD", raising=False)
    with pytest.raises(WakeupSettingsError, match="IPMI_PASSWORD"):
        parse_ipmi_options("-I lanplus -H bmc -U u -E")


def test_password_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "pw"
    secret.write_text("filepw\nignored\n")
    assert parse_ipmi_options(f"-H bmc -U u -f {secret}").password == "filepw"


def test_kg_privilege_and_ignored_tuning_options() -> None:
    options = parse_ipmi_options(
        "-I lanplus -H bmc -U u -P p -y 0x0a0b -L operator -C 17 -N 2 -R 1"
    )
    assert options.kg == b"\x0a\x0b"
    assert options.privilege == 3


def test_password_is_not_in_repr() -> None:
    options = parse_ipmi_options("-H bmc -U admin -P topsecret")
    assert "topsecret" not in repr(options)
    assert "topsecret" not in repr(IpmiWakeup(options))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-I lanplus -U admin -P p", "no BMC address"),
        ("-I open -H bmc", "interface 'open'"),
        ("-H bmc -p 70000", "not a UDP port"),
        ("-H bmc -p http", "not a UDP port"),
        ("-H bmc -X", "unsupported option"),
        ("-H bmc chassis power on", "unsupported option"),
        ("-H bmc -U", "needs a value"),
        ("-H bmc -L emperor", "privilege level"),
        ("-H 'bmc", "cannot parse"),
    ],
)
def test_malformed_options(text: str, message: str) -> None:
    with pytest.raises(WakeupSettingsError, match=message):
        parse_ipmi_options(text)


def test_malformed_options_never_echo_the_password() -> None:
    with pytest.raises(WakeupSettingsError) as caught:
        parse_ipmi_options("-H bmc -U admin -P topsecret extra-topsecret")
    assert "topsecret" not in str(caught.value)


def test_settings_errors_are_wakeup_errors() -> None:
    # A manager that catches WakeupError around a wake-up also catches bad settings.
    with pytest.raises(WakeupError):
        make_wakeup_driver({"driver": "IPMI", "options": "-U admin"})


def test_factory_builds_ipmi_driver_with_timeout() -> None:
    driver = make_wakeup_driver(
        {"driver": "ipmi", "options": "-I lanplus -H 127.0.0.1 -p 6230 -U a -P b", "timeout": 2}
    )
    assert isinstance(driver, IpmiWakeup)
    assert driver.name == "IPMI"
    assert driver.timeout == 2.0
    assert driver.options.port == 6230


@pytest.mark.parametrize(
    ("error", "description"),
    [
        (
            pyghmi_exceptions.IpmiException("Incorrect password provided"),
            "authentication failed (Incorrect password provided)",
        ),
        (
            pyghmi_exceptions.IpmiException("Unauthorized name in RAKP2"),
            "authentication failed (Unauthorized name in RAKP2)",
        ),
        (pyghmi_exceptions.IpmiException(None), "unreachable (no answer to the session login)"),
        (
            pyghmi_exceptions.IpmiException("timeout"),
            "unreachable (no answer to the session login)",
        ),
        (pyghmi_exceptions.IpmiException("Unspecified error"), "Unspecified error"),
        (socket.gaierror(-2, "Name or service not known"), "cannot reach it"),
        (struct.error("pack expected 32 items for packing (got 20)"), "protocol error (error: "),
    ],
)
def test_pyghmi_errors_are_described(error: Exception, description: str) -> None:
    assert _PyghmiFailure(error).describe().startswith(description)


async def test_pyghmi_failures_surface_as_wakeup_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_call(*_: object) -> None:
        raise pyghmi_exceptions.IpmiException("Incorrect password provided")

    monkeypatch.setattr(ipmi_module, "_session_call", failing_call)
    driver = IpmiWakeup.from_options("-H 127.0.0.1 -p 6230 -U admin -P nope")
    with pytest.raises(WakeupError, match=r"^IPMI power on via BMC 127.0.0.1:6230: authentication"):
        await driver.wake()
    with pytest.raises(WakeupError, match=r"^IPMI power status via BMC"):
        await driver.power_status()


async def test_a_hung_bmc_call_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hung_call(*_: object) -> None:
        release.wait(30)

    monkeypatch.setattr(ipmi_module, "_session_call", hung_call)
    driver = IpmiWakeup.from_options("-H 127.0.0.1 -p 6230 -U a -P b", timeout=0.2)
    try:
        with pytest.raises(WakeupError, match="no answer from BMC 127.0.0.1:6230 within 0.2 s"):
            await driver.wake()
    finally:
        release.set()
