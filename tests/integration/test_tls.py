"""TLS on every HTTP listener: a local cluster started with ``tls`` (``snooze cluster up --tls``)
forms, so its processes' internal calls work over https; clients that check the bootstrap with
the cluster's authority are served, plain http and clients without the authority are not."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from snooze.client import SnoozeClientError, SyncSnoozeClient
from snooze.codes import ErrorCode
from snooze.dev.localcluster import LocalCluster, assigned_lcs
from snooze.models import NetworkAddress
from snooze.protocol.messages import DescribeLocalController
from snooze.rpc import RpcClient, RpcError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def fetch(url: str, context: ssl.SSLContext | None) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        return resp.status, json.loads(resp.read())


def test_a_cluster_with_tls_forms_and_serves_https_only(cluster_factory: Any) -> None:
    c: LocalCluster = cluster_factory(gms=2, lcs=2, tls=True, ec2=True)
    manifest = json.loads(c.manifest_path.read_text())
    ca = manifest["caCert"]
    assert manifest["bootstrapUrl"] == f"https://127.0.0.1:{c.options.base_port}"
    assert manifest["ec2"]["url"].startswith("https://")
    key = Path(ca).with_name("key.pem")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    for p in c.processes:
        assert "peers reach it at https://127.0.0.1:" in Path(p["log"]).read_text(), p["id"]
    verified = ssl.create_default_context(cafile=ca)

    # The hierarchy formed (up() waited for it): the bootstrap asked the leader, the leader its
    # group managers, local controllers joined them, all over https. Served to a client that
    # checks the bootstrap's certificate with the cluster's authority:
    status, hierarchy = fetch(c.bootstrap_url + "/bootstrap?getCompleteHierarchy", verified)
    assert status == 200 and assigned_lcs(hierarchy) == {"lc-1", "lc-2"}
    assert fetch(f"https://localhost:{c.options.base_port}/health", verified)[1]["status"] == "ok"

    # The command line finds the URL and the authority in cluster.json.
    env = {k: v for k, v in os.environ.items() if k not in ("SNOOZE_CA", "SNOOZE_URL", "SNOOZE_STATE_DIR")}
    out = subprocess.run([sys.executable, "-m", "snooze.cli", "hierarchy", "--state-dir", str(c.state_dir)],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    assert "lc-1" in out.stdout and "lc-2" in out.stdout
    # Given only the URL, it needs the authority: refused without, served with --ca.
    url = ["--url", c.bootstrap_url]
    out = subprocess.run([sys.executable, "-m", "snooze.cli", "hierarchy", *url],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert out.returncode == 1 and "certificate cannot be verified" in out.stderr and "--ca" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "snooze.cli", "hierarchy", *url, "--ca", ca],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert out.returncode == 0 and "lc-2" in out.stdout, out.stderr

    # Plain http to the TLS port gets no answer; a client without the authority refuses the
    # certificate (Python's and ours).
    for port in (c.options.base_port, c.process("gm-1")["port"], c.ec2_port):
        with pytest.raises((OSError, http.client.HTTPException)):
            fetch(f"http://127.0.0.1:{port}/health", None)
    with pytest.raises(urllib.error.URLError) as refused:
        fetch(c.bootstrap_url + "/bootstrap?getCompleteHierarchy", ssl.create_default_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    client = SyncSnoozeClient(c.bootstrap_url, ca="")
    try:
        with pytest.raises(SnoozeClientError) as info:
            client.get_complete_hierarchy()
        assert info.value.code == ErrorCode.UNREACHABLE and "certificate" in info.value.message
    finally:
        client.close()
    with SyncSnoozeClient(c.bootstrap_url, ca=ca) as good:
        assert assigned_lcs(good.get_complete_hierarchy()) == {"lc-1", "lc-2"}

    # The EC2 API's listener serves https too (an unsigned request: an EC2 error, over TLS).
    with pytest.raises(urllib.error.HTTPError) as ec2:
        fetch(f"https://127.0.0.1:{c.ec2_port}/?Action=DescribeInstances", verified)
    assert 400 <= ec2.value.code < 500

    # Internal calls: over https with the authority; not over plain http.
    async def internal() -> None:
        lc = NetworkAddress("127.0.0.1", c.process("lc-1")["port"])
        over_tls = RpcClient(c.options.key.encode(), "operator", tls=verified)
        plain = RpcClient(c.options.key.encode(), "operator")
        try:
            assert isinstance(await over_tls.call(lc, DescribeLocalController.KIND, {}), dict)
            with pytest.raises(RpcError) as err:
                await plain.call(lc, DescribeLocalController.KIND, {}, timeout=5)
            assert err.value.code == ErrorCode.UNREACHABLE
        finally:
            await over_tls.close()
            await plain.close()

    asyncio.run(internal())
