"""The cluster's event stream on a real local cluster: ``GET /events`` (server-sent events) from
the bootstrap, fed by every process through ZooKeeper's sequential znodes. The formation, a
submission, a VM action and a failover arrive in order, none missing; a reconnection with
``Last-Event-ID`` resumes exactly after it; a user's token sees their own VMs' events only."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pytest

from snooze.client.sync import SyncSnoozeClient
from tests.support import http, wait_for

pytestmark = [pytest.mark.integration]

TEMPLATE = {"vcpus": 1, "memory": 262144, "imageId": "debian.qcow2"}


def leader_of(url: str, token: str) -> str:
    status, leader = http("GET", url + "/bootstrap?getGroupLeaderDescription", token=token)
    assert status == 200, leader
    return str(leader["id"])


class SseReader(threading.Thread):
    """Reads ``url`` as server-sent events into ``events`` (the parsed ``data`` of each)."""

    def __init__(self, url: str, token: str | None, last_event_id: str | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.last_event_id = url, token, last_event_id
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.resp: Any = None
        self.error: BaseException | None = None
        self.closing = False

    def run(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=120) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                self.resp = resp
                fields: dict[str, str] = {}
                for raw in resp:
                    line = raw.decode().rstrip("\n")
                    if not line:
                        if "data" in fields:
                            event = json.loads(fields["data"])
                            assert fields.get("event") == event["kind"] and fields.get("id") == str(event["id"])
                            self.ids.append(fields["id"])
                            self.events.append(event)
                        fields = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(": ")
                        fields[key] = value
        except Exception as exc:  # noqa: BLE001  (a real failure is kept; the test's own close is not one)
            if not self.closing:
                self.error = exc

    def of(self, kind: str, **data: Any) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["kind"] == kind and all(e["data"].get(k) == v for k, v in data.items())]

    def close(self) -> None:
        self.closing = True
        if self.resp is not None:
            self.resp.close()


def test_the_event_stream_follows_formation_submissions_actions_and_a_failover(cluster_factory: Any) -> None:
    c = cluster_factory(gms=3, lcs=2, auth=True)
    url, admin = c.bootstrap_url, c.admin_token
    status, made = http("POST", url + "/tokens", json.dumps({"user": "alice"}), token=admin)
    assert status == 201
    alice = made["token"]
    assert http("GET", url + "/events")[0] == 401  # the stream needs a token too
    assert http("GET", url + "/events?after=x", token=admin)[0] == 400
    assert http("GET", url + "/events?kinds=NOPE", token=admin)[0] == 400

    everything = SseReader(url + "/events?after=-1", admin)  # from the oldest event kept
    mine = SseReader(url + "/events", alice)  # from now on
    everything.start()
    mine.start()
    try:
        # The formation, as it happened: one leader, the other two group managers, both hosts.
        wait_for(lambda: len(everything.of("LOCAL_CONTROLLER_ASSIGNED")) >= 2 and len(everything.of("LOCAL_CONTROLLER_JOINED")) >= 2,
                 15, "the formation's events")
        [elected] = everything.of("GROUP_LEADER_ELECTED")
        first_leader = elected["data"]["groupManagerId"]
        assert elected["data"]["epoch"] >= 1 and first_leader == leader_of(url, admin)
        assert {e["data"]["groupManagerId"] for e in everything.of("GROUP_MANAGER_JOINED")} == \
            {p["id"] for p in c.processes if p["role"] == "groupmanager"} - {first_leader}
        wait_for(lambda: mine.resp is not None, 10, "alice's stream open")

        with SyncSnoozeClient(url, token=alice) as api:
            api.submit_virtual_cluster([{"name": "alice-vm", **TEMPLATE}], timeout=60)
        with SyncSnoozeClient(url, token=admin) as api:
            api.submit_virtual_cluster([{"name": "admin-vm", **TEMPLATE}], timeout=60)
        with SyncSnoozeClient(url, token=alice) as api:
            assert api.suspend_virtual_machine("alice-vm") is True
        wait_for(lambda: everything.of("VIRTUAL_MACHINE_STATE", virtualMachineId="alice-vm", action="suspend"), 10,
                 "the suspension's event")
        running = {e["data"]["virtualMachineId"]: e for e in everything.of("VIRTUAL_MACHINE_STATE", status="RUNNING")}
        assert set(running) == {"alice-vm", "admin-vm"} and running["alice-vm"]["data"]["owner"] == "alice"
        wait_for(lambda: mine.of("VIRTUAL_MACHINE_STATE", virtualMachineId="alice-vm", action="suspend"), 10,
                 "alice seeing her suspension")
        assert mine.of("VIRTUAL_MACHINE_STATE", virtualMachineId="alice-vm", status="RUNNING")
        assert not [e for e in mine.events if e["data"].get("virtualMachineId") == "admin-vm"], "another user's VM"

        # Failover: a new leader of a newer term, and its hosts assigned again.
        assigned_before = len(everything.of("LOCAL_CONTROLLER_ASSIGNED"))
        c.kill(first_leader)
        wait_for(lambda: len(everything.of("GROUP_LEADER_ELECTED")) == 2, 30, "the new leader's event")
        second = everything.of("GROUP_LEADER_ELECTED")[1]["data"]
        assert second["groupManagerId"] != first_leader and second["epoch"] > elected["data"]["epoch"]
        wait_for(lambda: len(everything.of("LOCAL_CONTROLLER_ASSIGNED")) > assigned_before or
                 everything.of("GROUP_MANAGER_FAILED"), 30, "the hierarchy healing")
    finally:
        everything.close()
        mine.close()
    assert everything.error is None and mine.error is None, (everything.error, mine.error)

    # In order, none missing: the log's ids are consecutive and the stream gave each once.
    ids = [e["id"] for e in everything.events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    assert [e["id"] for e in mine.events] == sorted({e["id"] for e in mine.events})

    # A reconnection with Last-Event-ID resumes right after it (the JSON form, and the stream).
    cut = ids[len(ids) // 2]
    status, page = http("GET", url + f"/events?format=json&after={cut}", token=admin)
    assert status == 200 and [e["id"] for e in page["events"]][: len(ids) - len(ids) // 2 - 1] == ids[len(ids) // 2 + 1:]
    again = SseReader(url + "/events", admin, last_event_id=str(cut))
    again.start()
    try:
        wait_for(lambda: len(again.events) >= len(ids) - len(ids) // 2 - 1, 10, "the resumed stream")
    finally:
        again.close()
    assert [e["id"] for e in again.events][: len(ids) - len(ids) // 2 - 1] == ids[len(ids) // 2 + 1:]
    status, only = http("GET", url + "/events?format=json&after=-1&kinds=GROUP_LEADER_ELECTED", token=admin)
    assert status == 200 and [e["kind"] for e in only["events"]] == ["GROUP_LEADER_ELECTED"] * 2
