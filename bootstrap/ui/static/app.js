// The Snooze dashboard: the hierarchy as a live tree, tables of group managers, local
// controllers and VMs, VM actions, a form to start a virtual cluster, the energy view and the
// event feed. Live: the event stream (/events) says when something changed; what changed is
// read again from the API (at most twice a second), and VM states are shown as they arrive.
import { ApiError, call, follow, setToken, token, tokenFromFragment, verb } from "./api.js";
import { DIMENSIONS, Pager, amount, badge, bar, h, replace, when } from "./dom.js";
import { EnergyView } from "./energy.js";

const VM_STATUSES = ["PENDING", "DISPATCHED", "RUNNING", "PAUSED", "SHUTDOWN", "SHUTOFF", "ERROR", "UNKNOWN"];
const EVENT_KINDS = [
  "GROUP_LEADER_ELECTED", "GROUP_MANAGER_JOINED", "GROUP_MANAGER_FAILED", "LOCAL_CONTROLLER_JOINED",
  "LOCAL_CONTROLLER_FAILED", "LOCAL_CONTROLLER_ASSIGNED", "VIRTUAL_MACHINE_STATE", "MIGRATION_STARTED",
  "MIGRATION_FINISHED", "MIGRATION_FAILED", "HOST_POWERED_DOWN", "HOST_WOKEN", "RECONFIGURATION",
];
const ACTIONS = [
  ["suspendVirtualMachine", "Suspend"], ["resumeVirtualMachine", "Resume"], ["shutdownVirtualMachine", "Shutdown"],
  ["rebootVirtualMachine", "Reboot"], ["destroyVirtualMachine", "Destroy"],
];
const FEED_KEEP = 500;
const LAZY_TREE = 300; // more local controllers than this: group managers start folded

const $ = (id) => document.getElementById(id);

const state = {
  hierarchy: null,
  leader: null, // {id, epoch}
  gms: [],
  lcs: [],
  vms: new Map(), // id -> VM metadata (getVirtualMachineDescriptions)
  events: [],
  lastEventId: null,
  folded: new Set(), // group managers the user folded (or that start folded)
  opened: new Set(),
  firstTree: false,
};
const energy = new EnergyView($("energy-chart"));

// -- messages ---------------------------------------------------------------------------
function toast(text, bad = false) {
  const item = h("div", { class: bad ? "bad" : "" }, text);
  $("toast").append(item);
  setTimeout(() => item.remove(), bad ? 8000 : 4000);
}

function problem(err) {
  const box = $("problem");
  if (!err) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  if (err instanceof ApiError && err.status === 401) {
    box.textContent = "This cluster needs an API token: paste one above (an admin's, or a user's to see your own VMs).";
  } else {
    box.textContent = `The bootstrap answered: ${err.message}`;
  }
}

// -- reading the cluster ----------------------------------------------------------------
function flatten(hierarchy) {
  const gms = hierarchy.groupManagerDescriptions || [];
  const lcs = [];
  for (const gm of gms) {
    for (const lc of gm.localControllers || []) lcs.push({ ...lc, groupManagerId: lc.groupManagerId || gm.id });
  }
  lcs.sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
  return { gms: [...gms].sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true })), lcs };
}

async function readHierarchy() {
  const hierarchy = await verb("getCompleteHierarchy");
  state.hierarchy = hierarchy;
  const gl = hierarchy.groupLeaderDescription;
  if (gl && (!state.leader || gl.epoch >= state.leader.epoch)) state.leader = { id: gl.id, epoch: gl.epoch };
  Object.assign(state, flatten(hierarchy));
  energy.sample(Date.now() / 1000, state.lcs);
}

async function readVms() {
  const all = new Map();
  for (let start = 0; ; start += 1000) {
    const page = await verb("getVirtualMachineDescriptions", undefined, `&v=2&start=${start}&limit=1000`);
    for (const vm of page.virtualMachines || []) all.set(vm.virtualMachineId, vm);
    if (!page.virtualMachines || page.virtualMachines.length < 1000 || start + 1000 >= page.total) break;
  }
  state.vms = all;
}

let refreshing = null;
let again = false;
let lastRefresh = 0;
let timer = null;

// Read the cluster again soon: at most one read at a time, and at most twice a second.
function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  if (timer) return;
  const wait = Math.max(0, lastRefresh + 500 - Date.now());
  timer = setTimeout(() => {
    timer = null;
    refreshing = (async () => {
      lastRefresh = Date.now();
      try {
        const began = performance.now();
        await Promise.all([readHierarchy(), readVms()]);
        problem(null);
        $("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
        const drawn = performance.now();
        render();
        // What a refresh costs (bench/dashboard.py reads these): the reads, then the drawing.
        performance.measure("snooze:read", { start: began, end: drawn });
        performance.measure("snooze:render", { start: drawn, end: performance.now() });
      } catch (err) {
        problem(err);
      } finally {
        refreshing = null;
        if (again) {
          again = false;
          refresh();
        }
      }
    })();
  }, wait);
}

// -- the header and the overview ----------------------------------------------------------
function renderLeader() {
  const node = $("leader");
  node.textContent = state.leader ? `${state.leader.id} (epoch ${state.leader.epoch})` : "none";
  node.dataset.leader = state.leader ? state.leader.id : "";
}

function sum(items, key, dim) {
  return items.reduce((acc, x) => acc + (Number(x[key]?.[dim]) || 0), 0);
}

function renderTotals() {
  const active = state.lcs.filter((lc) => lc.status === "ACTIVE");
  const count = (s) => state.lcs.filter((lc) => lc.status === s).length;
  const vms = [...state.vms.values()];
  const running = vms.filter((vm) => vm.status === "RUNNING").length;
  const card = (n, what, extra) => h("div", { class: "card" }, h("div", { class: "n" }, String(n)), h("div", { class: "what" }, what), extra);
  replace(
    $("totals"),
    card(state.gms.length + (state.leader ? 1 : 0), state.leader ? `group managers: ${state.leader.id} leads` : "group managers"),
    card(state.lcs.length, `local controllers: ${count("ACTIVE")} active, ${count("PASSIVE")} asleep, ${count("WAKING")} waking`),
    card(vms.length, `virtual machines: ${running} running`),
    card(
      `${Math.round((100 * sum(active, "requestedCapacity", 0)) / Math.max(1, sum(active, "totalCapacity", 0)))}%`,
      "of active vCPUs requested",
      h("div", { class: "bars" }, [0, 1].map((d) => bar(d, sum(active, "usedCapacity", d), sum(active, "requestedCapacity", d), sum(active, "totalCapacity", d)))),
    ),
  );
}

function lcNode(lc) {
  const names = new Set([...(lc.assignedVirtualMachines || []), ...Object.keys(lc.virtualMachineMetaData || {})]);
  const chips = [...names].sort().map((name) => {
    const st = state.vms.get(name)?.status || lc.virtualMachineMetaData?.[name]?.status || "UNKNOWN";
    return h("span", { class: "vm-chip", dataset: { vm: name, status: st }, title: `${name}: ${st}` }, name);
  });
  const total = lc.totalCapacity || [0, 0, 0, 0];
  return h(
    "li",
    { class: "lc", dataset: { lc: lc.id, status: lc.status } },
    h("span", { class: "lc-name" }, lc.id),
    badge(lc.status),
    h("span", { class: "addr" }, lc.controlDataAddress ? `${lc.controlDataAddress.address}:${lc.controlDataAddress.port}` : ""),
    h("span", { class: "bars" }, DIMENSIONS.map((_, d) => bar(d, lc.usedCapacity?.[d], lc.requestedCapacity?.[d], total[d]))),
    h("span", { class: "vms" }, chips),
  );
}

function renderTree() {
  const tree = $("tree");
  const lazy = state.lcs.length > LAZY_TREE;
  const byGm = new Map(state.gms.map((gm) => [gm.id, []]));
  for (const lc of state.lcs) byGm.get(lc.groupManagerId)?.push(lc);
  const gmNodes = state.gms.map((gm) => {
    const lcs = byGm.get(gm.id) || [];
    const open = state.opened.has(gm.id) || (!lazy && !state.folded.has(gm.id));
    const vmCount = lcs.reduce((acc, lc) => acc + (lc.assignedVirtualMachines || []).length, 0);
    const addr = gm.listenSettings?.controlDataAddress;
    const list = h("ul", {});
    const details = h(
      "details",
      { open },
      h(
        "summary",
        {},
        h("span", { class: "gm-name" }, gm.id), " ",
        h("span", { class: "addr" }, addr ? `${addr.address}:${addr.port}` : ""), " ",
        h("span", { class: "muted" }, `${lcs.length} local controllers · ${vmCount} VMs`),
      ),
      list,
    );
    const fill = () => replace(list, lcs.map(lcNode));
    if (open) fill();
    details.addEventListener("toggle", () => {
      if (details.open) {
        state.folded.delete(gm.id);
        state.opened.add(gm.id);
        if (!list.firstChild) fill();
      } else {
        state.opened.delete(gm.id);
        state.folded.add(gm.id);
      }
    });
    return h("li", { class: "gm", dataset: { gm: gm.id } }, details);
  });
  const gl = state.leader;
  replace(tree, h("ul", {}, h("li", { class: "gl" }, `group leader ${gl ? gl.id : "(none)"}`, gl ? ` · epoch ${gl.epoch}` : ""), h("li", {}, h("ul", {}, gmNodes))));
  if (!state.firstTree) {
    state.firstTree = true;
    performance.mark("snooze:first-tree");
    document.body.dataset.ready = "true";
  }
}

// -- the tables -------------------------------------------------------------------------
const gmPager = new Pager($("gm-table"), {
  columns: ["id", "address", "local controllers", "active vCPUs", "requested vCPUs", "active memory", "requested memory", "role"],
  render: (gm) => {
    const s = gm.summaryInformation || {};
    const addr = gm.listenSettings?.controlDataAddress;
    return h(
      "tr",
      { dataset: { gm: gm.id } },
      h("td", { class: "mono" }, gm.id),
      h("td", { class: "mono" }, addr ? `${addr.address}:${addr.port}` : ""),
      h("td", {}, String((gm.localControllers || []).length)),
      h("td", {}, amount(0, s.activeCapacity?.[0])),
      h("td", {}, amount(0, s.requestedCapacity?.[0])),
      h("td", {}, amount(1, s.activeCapacity?.[1])),
      h("td", {}, amount(1, s.requestedCapacity?.[1])),
      h("td", {}, state.leader && state.leader.id === gm.id ? "group leader" : "group manager"),
    );
  },
  emptyText: "no group manager",
});

const lcPager = new Pager($("lc-table"), {
  columns: ["id", "group manager", "power", "address", "vCPUs used / requested / total", "memory used / requested / total", "VMs", "wake-up"],
  render: (lc) => {
    const t = lc.totalCapacity || [];
    const three = (d) => `${amount(d, lc.usedCapacity?.[d])} / ${amount(d, lc.requestedCapacity?.[d])} / ${amount(d, t[d])}`;
    return h(
      "tr",
      { dataset: { lc: lc.id } },
      h("td", { class: "mono" }, lc.id),
      h("td", { class: "mono" }, lc.groupManagerId || ""),
      h("td", {}, badge(lc.status)),
      h("td", { class: "mono" }, lc.controlDataAddress ? `${lc.controlDataAddress.address}:${lc.controlDataAddress.port}` : ""),
      h("td", {}, three(0)),
      h("td", {}, three(1)),
      h("td", {}, String((lc.assignedVirtualMachines || []).length)),
      h("td", {}, lc.wakeupSettings?.driver || ""),
    );
  },
  emptyText: "no local controller",
});

function matches(text, ...fields) {
  if (!text) return true;
  const t = text.toLowerCase();
  return fields.some((f) => f !== null && f !== undefined && String(f).toLowerCase().includes(t));
}

function renderHosts() {
  gmPager.show(state.gms);
  const text = $("lc-filter").value.trim();
  const status = $("lc-status").value;
  lcPager.show(
    state.lcs.filter(
      (lc) => (!status || lc.status === status) &&
        matches(text, lc.id, lc.groupManagerId, lc.hostname, lc.controlDataAddress && `${lc.controlDataAddress.address}:${lc.controlDataAddress.port}`),
    ),
  );
}

async function act(verbName, vmId, body) {
  try {
    const ok = await verb(verbName, body === undefined ? vmId : body);
    toast(ok === false ? `${verbName} ${vmId}: refused (false)` : `${verbName} ${vmId}: done`, ok === false);
  } catch (err) {
    toast(`${verbName} ${vmId}: ${err.message}`, true);
  }
  refresh();
}

// Destroying is for good: a second click within CONFIRM_MS confirms. Which VMs await that
// click is kept here, not in the button, so that a table redrawn meanwhile (an event, a
// refresh) still shows "Confirm destroy" and takes the second click.
const CONFIRM_MS = 4000;
const confirming = new Map(); // VM id -> when its confirmation ends (ms since the epoch)

function actionCell(vm) {
  const id = vm.virtualMachineId;
  const here = vm.virtualMachineLocation?.localControllerId;
  const buttons = ACTIONS.map(([name, label]) => {
    const destroy = name === "destroyVirtualMachine";
    const armed = destroy && (confirming.get(id) || 0) > Date.now();
    const b = h("button", { type: "button", class: destroy ? (armed ? "danger confirm" : "danger") : "", dataset: { action: name, vm: id } },
      armed ? "Confirm destroy" : label);
    if (armed) disarmLater(b, label, confirming.get(id) - Date.now());
    b.addEventListener("click", () => {
      if (destroy && !((confirming.get(id) || 0) > Date.now())) {
        confirming.set(id, Date.now() + CONFIRM_MS);
        b.classList.add("confirm");
        b.textContent = "Confirm destroy";
        disarmLater(b, label, CONFIRM_MS);
        return;
      }
      if (destroy) confirming.delete(id);
      act(name, id);
    });
    return b;
  });
  const targets = state.lcs.filter((lc) => lc.status === "ACTIVE" && lc.id !== here);
  const select = h("select", { dataset: { migrateTarget: id }, "aria-label": `migrate ${id} to` },
    h("option", { value: "" }, "migrate to…"), targets.map((lc) => h("option", { value: lc.id }, lc.id)));
  const go = h("button", { type: "button", dataset: { action: "migrateVirtualMachine", vm: id } }, "Migrate");
  go.addEventListener("click", () => {
    if (!select.value) {
      toast(`choose the local controller to migrate ${id} to`, true);
      return;
    }
    act("migrateVirtualMachine", id, { virtualMachineId: id, localControllerId: select.value });
  });
  return h("td", { class: "actions" }, buttons, select, go);
}

function disarmLater(button, label, ms) {
  setTimeout(() => {
    if ((confirming.get(button.dataset.vm) || 0) > Date.now()) return; // armed again meanwhile
    confirming.delete(button.dataset.vm);
    button.classList.remove("confirm");
    button.textContent = label;
  }, ms);
}

const vmPager = new Pager($("vm-table"), {
  columns: ["id", "status", "local controller", "group manager", "vCPUs", "memory", "address", "owner", "actions"],
  render: (vm) => {
    const loc = vm.virtualMachineLocation || {};
    const req = vm.requestedCapacity || [];
    return h(
      "tr",
      { dataset: { vm: vm.virtualMachineId, status: vm.status } },
      h("td", { class: "mono" }, vm.virtualMachineId),
      h("td", {}, badge(vm.status), vm.errorCode ? h("span", { class: "muted", title: vm.message || "" }, ` ${vm.errorCode}`) : null),
      h("td", { class: "mono" }, loc.localControllerId || ""),
      h("td", { class: "mono" }, loc.groupManagerId || ""),
      h("td", {}, amount(0, req[0])),
      h("td", {}, amount(1, req[1])),
      h("td", { class: "mono" }, vm.ipAddress || ""),
      h("td", {}, vm.owner || ""),
      actionCell(vm),
    );
  },
  emptyText: "no virtual machine",
});

function renderVms() {
  const text = $("vm-filter").value.trim();
  const status = $("vm-status").value;
  const rows = [...state.vms.values()]
    .filter((vm) => (!status || vm.status === status) &&
      matches(text, vm.virtualMachineId, vm.virtualMachineLocation?.localControllerId, vm.virtualMachineLocation?.groupManagerId, vm.ipAddress, vm.owner))
    .sort((a, b) => a.virtualMachineId.localeCompare(b.virtualMachineId, undefined, { numeric: true }));
  vmPager.show(rows);
}

// -- events -----------------------------------------------------------------------------
function describe(ev) {
  const d = ev.data || {};
  const parts = [];
  for (const k of ["virtualMachineId", "status", "localControllerId", "groupManagerId", "source", "destination", "what", "errorCode", "seconds"]) {
    if (d[k] !== undefined && d[k] !== null) parts.push(`${k.replace(/Id$/, "")} ${d[k]}`);
  }
  return parts.join(" · ");
}

function feedItem(ev) {
  return h("li", { dataset: { kind: ev.kind, id: ev.id } }, h("span", { class: "t" }, when(ev.time)), h("span", { class: "k" }, ev.kind), describe(ev));
}

const eventPager = new Pager($("event-table"), {
  pageSize: 100,
  columns: ["id", "time", "kind", "source", "what"],
  render: (ev) => h(
    "tr",
    { dataset: { kind: ev.kind } },
    h("td", { class: "mono" }, String(ev.id)),
    h("td", { class: "mono" }, when(ev.time)),
    h("td", {}, ev.kind),
    h("td", { class: "mono" }, ev.source),
    h("td", {}, describe(ev)),
  ),
  emptyText: "no event yet",
});

const powerPager = new Pager($("power-table"), {
  pageSize: 20,
  columns: ["time", "what", "local controller", "group manager"],
  render: (ev) => h(
    "tr",
    {},
    h("td", { class: "mono" }, when(ev.time)),
    h("td", {}, ev.kind === "HOST_WOKEN" ? "woken" : "powered down"),
    h("td", { class: "mono" }, ev.data.localControllerId || ""),
    h("td", { class: "mono" }, ev.data.groupManagerId || ""),
  ),
  emptyText: "no wake-up or power-down yet",
});

function renderEvents() {
  const newest = state.events.slice(-15).reverse();
  replace($("feed-short"), newest.length ? newest.map(feedItem) : h("li", { class: "muted" }, "no event yet"));
  const kind = $("event-kind").value;
  const text = $("event-filter").value.trim();
  eventPager.show(state.events.filter((ev) => (!kind || ev.kind === kind) && matches(text, ev.id, ev.source, ev.kind, describe(ev))).reverse());
  powerPager.show(state.events.filter((ev) => ev.kind === "HOST_WOKEN" || ev.kind === "HOST_POWERED_DOWN").reverse());
}

const progress = new Map(); // vm name -> its row in the start form's progress table

function onEvent(ev) {
  if (state.lastEventId !== null && ev.id <= state.lastEventId) return;
  state.lastEventId = ev.id;
  performance.mark("snooze:event", { detail: { id: ev.id, kind: ev.kind, vm: ev.data?.virtualMachineId, status: ev.data?.status } });
  state.events.push(ev);
  if (state.events.length > FEED_KEEP) state.events.shift();
  energy.powerEvent(ev);
  const d = ev.data || {};
  if (ev.kind === "GROUP_LEADER_ELECTED" && d.groupManagerId) {
    const epoch = Number(d.epoch ?? ev.epoch) || 0;
    if (!state.leader || epoch >= state.leader.epoch) state.leader = { id: d.groupManagerId, epoch };
    renderLeader();
  }
  if (ev.kind === "VIRTUAL_MACHINE_STATE" && d.virtualMachineId) {
    const vm = state.vms.get(d.virtualMachineId);
    if (d.status === "DESTROYED") state.vms.delete(d.virtualMachineId);
    else if (vm) vm.status = d.status;
    else {
      // New here: shown at once from the event, completed by the next read.
      state.vms.set(d.virtualMachineId, {
        virtualMachineId: d.virtualMachineId, status: d.status, owner: d.owner,
        virtualMachineLocation: { localControllerId: d.localControllerId, groupManagerId: d.groupManagerId },
      });
    }
    const row = progress.get(d.virtualMachineId);
    if (row) replace(row.querySelector(".st"), badge(d.status));
  }
  scheduleRender();
  refresh();
}

let renderQueued = false;
let lastRender = 0;

// Draw what the events changed: at the next frame, at most four times a second (a thousand
// VMs starting is a thousand events).
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => requestAnimationFrame(() => {
    renderQueued = false;
    lastRender = performance.now();
    renderEvents();
    if (state.hierarchy) render();
  }), Math.max(0, lastRender + 250 - performance.now()));
}

async function startEvents() {
  // The latest few hundred events first (the feed and the energy view's history), then live.
  let after = null;
  try {
    const head = await call("/events?format=json&limit=1");
    const from = Math.max(-1, head.last - 300);
    const back = await call(`/events?format=json&after=${from}&limit=300`);
    for (const ev of back.events) onEvent(ev);
    after = back.last;
  } catch (err) {
    problem(err);
  }
  follow(after ?? state.lastEventId, onEvent, (s) => {
    const live = $("live");
    live.dataset.state = s;
    live.textContent = s;
    if (s === "live") refresh(); // what happened while the stream was down
  });
}

// -- the start form ----------------------------------------------------------------------
async function fillChoices() {
  const form = $("start-form");
  const fill = async (path, key, select) => {
    try {
      const data = await call(path);
      const items = data[key] || [];
      replace(select, h("option", { value: "" }, "(none)"), items.map((x) => h("option", { value: x.id }, x.name || x.id)));
    } catch {
      // no image repository or network model here: (none) stays the only choice
    }
  };
  await Promise.all([fill("/images", "images", form.elements.image), fill("/networks", "networks", form.elements.network)]);
}

async function pollTask(taskId, rows) {
  for (let i = 0; i < 600; i++) {
    let reply = null;
    try {
      reply = await verb("getVirtualClusterResponse", taskId);
    } catch (err) {
      toast(`task ${taskId}: ${err.message}`, true);
      return;
    }
    if (reply && typeof reply === "object") {
      for (const meta of reply.virtualMachineMetaData || []) {
        const row = rows.get(meta.virtualMachineId);
        if (!row) continue;
        replace(row.querySelector(".st"), badge(meta.status), meta.errorCode ? ` ${meta.errorCode}: ${meta.message || ""}` : "");
        replace(row.querySelector(".where"), meta.virtualMachineLocation?.localControllerId || "");
      }
      toast(reply.errorCode ? `task ${taskId}: ${reply.errorCode}` : `virtual cluster started (task ${taskId})`, Boolean(reply.errorCode));
      refresh();
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function submit(event) {
  event.preventDefault();
  const f = event.target.elements;
  const count = Number(f.count.value);
  const base = f.name.value.trim();
  const names = count === 1 ? [base] : Array.from({ length: count }, (_, i) => `${base}-${i + 1}`);
  const templates = names.map((name) => {
    const t = { name, vcpus: Number(f.vcpus.value), memory: Number(f.memory.value) * 1024 };
    if (f.image.value) t.imageId = f.image.value;
    if (f.network.value) t.network = f.network.value;
    return t;
  });
  let taskId;
  try {
    taskId = String(await verb("startVirtualCluster", { virtualMachineTemplates: templates })).trim();
  } catch (err) {
    toast(`start: ${err.message}${err.field ? ` (${err.field})` : ""}`, true);
    return;
  }
  const rows = new Map();
  const body = h("tbody", {});
  for (const name of names) {
    const row = h("tr", { dataset: { progress: name } }, h("td", { class: "mono" }, name), h("td", { class: "st" }, badge("PENDING")), h("td", { class: "where mono" }));
    rows.set(name, row);
    progress.set(name, row);
    body.append(row);
  }
  const box = h("div", { class: "progress" }, h("div", { class: "task" }, `task ${taskId}`),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "VM"), h("th", {}, "status"), h("th", {}, "local controller"))), body));
  $("start-progress").prepend(box);
  pollTask(taskId, rows);
}

// -- wiring -----------------------------------------------------------------------------
function render() {
  renderLeader();
  renderTotals();
  renderTree();
  renderHosts();
  renderVms();
  energy.render(Date.now() / 1000);
}

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${name}`;
  history.replaceState(null, "", `#${name}`);
}

function init() {
  tokenFromFragment();
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  const tab = location.hash.slice(1);
  if (document.getElementById(`tab-${tab}`)) showTab(tab);
  $("token").value = token() ? "••••••••" : "";
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token").value.trim();
    if (value && !value.startsWith("•")) setToken(value);
    if (!value) setToken("");
    location.reload();
  });
  for (const s of VM_STATUSES) $("vm-status").append(h("option", {}, s));
  for (const k of EVENT_KINDS) $("event-kind").append(h("option", {}, k));
  for (const id of ["lc-filter", "lc-status"]) $(id).addEventListener("input", () => { lcPager.page = 0; renderHosts(); });
  for (const id of ["vm-filter", "vm-status"]) $(id).addEventListener("input", () => { vmPager.page = 0; renderVms(); });
  for (const id of ["event-kind", "event-filter"]) $(id).addEventListener("input", () => { eventPager.page = 0; renderEvents(); });
  $("start-form").addEventListener("submit", submit);
  $("saver-suspend").addEventListener("click", () => act("suspendEnergySaver", "energy saver", ""));
  $("saver-resume").addEventListener("click", () => act("resumeEnergySaver", "energy saver", ""));
  refresh();
  startEvents();
  fillChoices();
  setInterval(() => {
    refresh(); // usage moves without events
    // The timings above are kept for a while, not for the life of a page left open for days.
    for (const name of ["snooze:event", "snooze:read", "snooze:render"]) {
      if (performance.getEntriesByName(name).length > 2000) {
        performance.clearMarks(name);
        performance.clearMeasures(name);
      }
    }
  }, 5000);
  setInterval(() => energy.render(Date.now() / 1000), 5000);
  renderEvents();
}

init();
