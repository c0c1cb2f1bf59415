"""TLS's options: both of ``[node] tls_cert`` and ``tls_key`` or neither, ``tls_ca`` only with
them; files that cannot be used are a start-up error naming the option; the local cluster's
own certificates; and which authority the ``snooze`` command checks a bootstrap with."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import stat
from pathlib import Path

import pytest

from snooze import config as cfg
from snooze import tls
from snooze.cli.target import ca_file, resolve
from snooze.dev.tlscerts import make_local_tls
from snooze.models import NetworkAddress
from snooze.service import Service, StartupError


@pytest.mark.parametrize(("node", "message"), [
    ({"tls_cert": "/etc/snooze/cert.pem"}, r"\[node\] tls_cert is set but \[node\] tls_key is empty"),
    ({"tls_key": "/etc/snooze/key.pem"}, r"\[node\] tls_key is set but \[node\] tls_cert is empty"),
    ({"tls_ca": "/etc/snooze/ca.pem"}, r"\[node\] tls_ca is set without \[node\] tls_cert"),
    ({"tls_cert": "c.pem", "tls_key": "", "tls_ca": "ca.pem"}, r"tls_key is empty"),
])
def test_tls_options_are_both_or_neither(node: dict[str, str], message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.from_dict({"node": node})


def test_tls_is_off_by_default_and_on_with_both_files() -> None:
    default = cfg.Settings().node
    assert (default.tls_cert, default.tls_key, default.tls_ca) == ("", "", "")
    s = cfg.from_dict({"node": {"tls_cert": "c.pem", "tls_key": "k.pem", "tls_ca": "ca.pem"}})
    assert (s.node.tls_cert, s.node.tls_key, s.node.tls_ca) == ("c.pem", "k.pem", "ca.pem")
    assert NetworkAddress("127.0.0.1", 5000).base_url(tls=True) == "https://127.0.0.1:5000"
    assert NetworkAddress("::1", 5000).url == "http://[::1]:5000"


def test_local_certificates_are_usable_and_the_key_is_private(tmp_path: Path) -> None:
    files = make_local_tls(tmp_path / "tls")
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert isinstance(tls.server_context(str(files.cert), str(files.key)), ssl.SSLContext)
    client = tls.client_context(str(files.ca))
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert not list(tmp_path.glob("tls/*ca*key*")), "the authority's key is never written"


def test_unusable_files_are_errors_naming_the_option(tmp_path: Path) -> None:
    files = make_local_tls(tmp_path / "tls")
    with pytest.raises(tls.TlsError, match=r"\[node\] tls_cert = .*missing.pem.*No such file"):
        tls.server_context(str(tmp_path / "missing.pem"), str(files.key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(tls.TlsError, match=r"\[node\] tls_cert"):
        tls.server_context(str(garbage), str(files.key))
    with pytest.raises(tls.TlsError, match=r"\[node\] tls_cert"):
        tls.server_context(str(files.cert), str(files.ca))  # not its key
    with pytest.raises(tls.TlsError, match=r"\[node\] tls_ca = .*garbage.pem"):
        tls.client_context(str(garbage))
    with pytest.raises(tls.TlsError, match=r"--ca"):
        tls.client_context(str(tmp_path / "nope.pem"), option="the CA file (--ca, SNOOZE_CA)")


class _Bootstrap(Service):
    role = "bootstrap"


async def test_a_process_whose_certificate_cannot_be_read_does_not_start(tmp_path: Path) -> None:
    s = cfg.from_dict({"node": {"port": 5099, "tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}})
    service = _Bootstrap(s)
    try:
        with pytest.raises(StartupError, match=r"\[node\] tls_cert = .*cert.pem.*cannot be used"):
            await service.start()
        assert service._runner is None, "nothing listens"
    finally:
        await service.stop()


def test_the_command_checks_a_local_cluster_with_its_authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNOOZE_CA", raising=False)
    monkeypatch.delenv("SNOOZE_URL", raising=False)
    (tmp_path / "cluster.json").write_text(json.dumps({"bootstrapUrl": "https://127.0.0.1:5000", "processes": [],
                                                       "caCert": "/state/tls/ca.pem"}))
    target = resolve(state_dir=tmp_path)
    assert (target.url, target.ca) == ("https://127.0.0.1:5000", "/state/tls/ca.pem")
    none = argparse.Namespace(ca=None)
    assert ca_file(none, target, env={}) == "/state/tls/ca.pem"
    assert ca_file(none, target, env={"SNOOZE_CA": "/env/ca.pem"}) == "/env/ca.pem"
    assert ca_file(argparse.Namespace(ca="/given/ca.pem"), target, env={"SNOOZE_CA": "/env/ca.pem"}) == "/given/ca.pem"
    plain = resolve(url="https://bootstrap.example:5000")
    assert plain.ca is None and ca_file(none, plain, env={}) is None, "then the system's authorities"
