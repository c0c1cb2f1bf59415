"""The bootstrap's part of the OpenAPI document (``snooze.openapi``): the schemas of the
original's descriptions (group managers, local controllers, VMs, virtual clusters), shared by
the verbs, and the declarations of the routes ``bootstrap/service.py`` and ``snooze.service``
register (the hierarchy verbs, the energy saver, ping, statistics, /health, /metrics).
The other modules declare their own routes: ``bootstrap/vms.py``, ``bootstrap/tokens.py``,
``bootstrap/events.py``, ``bootstrap/images/api.py``, ``bootstrap/network/api.py``.
"""

from __future__ import annotations

from aiohttp import web

from snooze.codes import ErrorCode, VMStatus
from snooze.ids import MAX_ID_LENGTH
from snooze.models import Status
from snooze.openapi import (
    JSON,
    TEXT,
    Body,
    Operation,
    any_of,
    array,
    boolean,
    component,
    describe,
    describe_verb,
    integer,
    nullable,
    number,
    obj,
    ref,
    string,
)
from snooze.virtualcluster import MAX_TEMPLATES

__all__ = ["ID", "describe_bootstrap", "id_body", "ok"]

#: An id (snooze.ids): VM names, task ids, group manager and local controller ids, image names.
ID = string(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", minLength=1, maxLength=MAX_ID_LENGTH,
            description="1-63 ASCII letters, digits, '.', '_' or '-', starting with a letter or a digit")
_ADDRESS = obj({"address": string(), "port": integer(minimum=0, maximum=65535)}, required=("address", "port"))
_CAPACITY = array(number(), minItems=4, maxItems=4,
                  description="[cpu (vcpus), memory (KiB), network rx (KiB/s), network tx (KiB/s)]")
_LC_STATUS = string(enum=[s.value for s in Status])


def ok(schema: dict[str, object], description: str = "") -> dict[int, tuple[Body, ...]]:
    """A 200 answering ``schema`` in JSON."""
    return {200: (Body(schema, description=description),)}


def id_body(name: str, what: str) -> tuple[Body, ...]:
    """A body that is one id, as the seed's curl sends it: bare (text), as a JSON string, or as
    ``{name: id}`` (``snooze.http.read_identifier``)."""
    return (Body(ID, TEXT, f"{what}, bare"),
            Body(any_of(ID, obj({name: ID}, required=(name,))), JSON, f"{what}, as a JSON string or {{\"{name}\": id}}"))


def _components(app: web.Application) -> None:
    component(app, "NetworkAddress", _ADDRESS)
    component(app, "Capacity", _CAPACITY)
    component(app, "ListenSettings", obj({
        "controlDataAddress": ref("NetworkAddress"), "monitoringDataAddress": ref("NetworkAddress"),
        "heartbeatAddress": ref("NetworkAddress"),
    }, required=("controlDataAddress",)))
    component(app, "LocalControllerDescription", obj({
        "id": string(), "controlDataAddress": ref("NetworkAddress"), "status": _LC_STATUS,
        "hypervisorSettings": obj(), "totalCapacity": ref("Capacity"),
        "virtualMachineMetaData": obj(extra=obj(), description="VM id -> what its host reports of it"),
        "wakeupSettings": obj(), "hostname": string(), "assignedVirtualMachines": array(string()),
        "groupManagerId": nullable(string()), "orphanVirtualMachines": array(string()),
    }, required=("id", "controlDataAddress", "status", "totalCapacity")))
    component(app, "GroupManagerDescription", obj({
        "id": string(), "hostname": string(), "listenSettings": ref("ListenSettings"), "isAssigned": boolean(),
        "epoch": integer(minimum=0), "summaryInformation": obj(),
        "localControllers": array(ref("LocalControllerDescription")),
        "stale": boolean(description="It did not answer in time: what it last said"),
        "error": string(), "staleForSeconds": number(),
        "warnings": array(string(), description="What is wrong with the hierarchy (e.g. too few group managers)"),
    }, required=("id", "listenSettings")))
    component(app, "Hierarchy", obj({
        "groupLeaderDescription": ref("GroupManagerDescription"),
        "groupManagerDescriptions": array(ref("GroupManagerDescription")),
        "warnings": array(string()),
    }, required=("groupLeaderDescription", "groupManagerDescriptions")))
    component(app, "VirtualMachineLocation", obj({
        "virtualMachineId": string(), "localControllerId": nullable(string()), "groupManagerId": nullable(string()),
        "groupManagerControlDataAddress": nullable(ref("NetworkAddress")),
        "localControllerControlDataAddress": nullable(ref("NetworkAddress")),
    }, required=("virtualMachineId",)))
    component(app, "VirtualMachineMetaData", obj({
        "virtualMachineId": string(), "status": string(enum=[s.value for s in VMStatus]),
        "errorCode": nullable(string(enum=[c.value for c in ErrorCode])), "message": nullable(string()),
        "virtualMachineLocation": ref("VirtualMachineLocation"),
        "usedCapacity": any_of(ref("Capacity"), obj(), description="Measured by its host; {} when not known"),
        "requestedCapacity": nullable(ref("Capacity")), "ipAddress": nullable(string()), "macAddress": nullable(string()),
        "groupManagerControlDataAddress": nullable(ref("NetworkAddress")), "xmlRepresentation": nullable(string()),
        "imageId": nullable(string()), "adaptations": array(string()), "rejections": obj(),
        "taskId": nullable(string()), "lastMigration": nullable(obj()), "owner": nullable(string()),
        "history": nullable(array(obj())),
        "reason": string(description="Why the status is UNKNOWN"), "recordedStatus": nullable(string()),
    }, required=("virtualMachineId", "status")))
    count = any_of(integer(), string(pattern=r"^[ \t]*-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?[ \t]*$"),
                   description="A number (or one written as a string, as the original's clients sent some)")
    component(app, "VirtualMachineTemplate", obj({
        "name": ID, "vcpus": count, "memory": count, "imageId": string(description="An image name, or a path whose last "
                                                                                    "component is one"),
        "hostId": string(description="A local controller's id: the VM is placed there ('' or UNKNOWN: anywhere)"),
        "networkCapacityDemand": obj({"rxBytes": count, "txBytes": count}),
        "libVirtTemplate": string(description="A libvirt domain: checked against the operator's template policy and rebuilt"),
        "libVirtDescription": string(description="The same, under its other name in the original's classes"),
        "affinityGroup": ID, "antiAffinityGroup": ID,
        "flavor": ID, "network": ID, "subnet": ID, "firewallGroup": ID, "vlanGroup": ID,
    }, description="Either libVirtTemplate, or vcpus, memory (KiB) and name (or a flavor and a name)"))
    component(app, "VirtualClusterSubmission", obj({
        "virtualMachineTemplates": array(ref("VirtualMachineTemplate"), minItems=1, maxItems=MAX_TEMPLATES),
        "requestId": ID,
    }, required=("virtualMachineTemplates",)))
    component(app, "VirtualClusterResponse", obj({
        "taskId": string(), "errorCode": nullable(string()),
        "virtualMachineMetaData": array(ref("VirtualMachineMetaData")),
    }, required=("virtualMachineMetaData",)))


#: What every role answers (snooze.service.Service): declared once, here, for the bootstrap.
_HEALTH = obj({"status": string(enum=["ok", "waiting"]), "role": string(), "id": string(), "zookeeper": string(),
               "detail": string(),
               "keys": obj({"signing": string(description="The fingerprint of the key this process signs with"),
                            "accepted": array(string(), description="The fingerprints of every key it accepts")},
                           required=("signing", "accepted"))},
              required=("status", "role", "id", "keys"))


def describe_bootstrap(app: web.Application) -> None:
    """Declare the bootstrap's own routes and the shared schemas (call once its routes are
    registered)."""
    _components(app)
    describe(app, "GET", "/health", Operation(
        "Whether the process is connected to ZooKeeper",
        answers={200: (Body(_HEALTH, description="Connected"),), 503: (Body(_HEALTH, description="Waiting for ZooKeeper"),)},
        tags=("service",)))
    describe(app, "GET", "/metrics", Operation(
        "Prometheus metrics", answers={200: (Body(string(), "text/plain", "Prometheus' text format"),)}, tags=("service",)))
    describe_verb(app, "bootstrap", "ping", Operation(
        "Who answers: id, role and the leader epoch it knows",
        answers=ok(obj({"id": string(), "role": string(), "epoch": integer()}, required=("id", "role", "epoch")))))
    describe_verb(app, "bootstrap", "getStatistics", Operation(
        "The process's own figures (memory, CPU, heartbeats, refusals)",
        answers=ok(obj({"id": string(), "role": string(), "rssBytes": integer(), "cpuSeconds": number(),
                        "taskFailures": integer(), "zookeeper": nullable(string())}, required=("id", "role")))))
    leader = (503,)
    describe_verb(app, "bootstrap", "getGroupLeaderDescription", Operation(
        "The current group leader", answers=ok(ref("GroupManagerDescription")), errors=leader))
    describe_verb(app, "bootstrap", "getCompleteHierarchy", Operation(
        "The group leader, its group managers and their local controllers (a user sees only their own VMs)",
        answers=ok(ref("Hierarchy")), errors=leader))
    describe_verb(app, "bootstrap", "getLocalControllerList", Operation(
        "Every local controller of the hierarchy",
        answers=ok(obj({"localControllers": array(ref("LocalControllerDescription"))}, required=("localControllers",))),
        errors=leader))
    saver = Operation(
        "Switch the energy saver of every group manager (or of the one whose id is the body)",
        "Answers whether every group manager asked took the order.",
        request=id_body("groupManagerId", "A group manager's id"), request_required=False,
        answers=ok(boolean()), errors=(404, 503))
    for verb in ("suspendEnergySaver", "resumeEnergySaver"):
        describe_verb(app, "bootstrap", verb, {"POST": saver, "GET": Operation(saver.summary, saver.description,
                                                                                answers=saver.answers, errors=saver.errors)})

