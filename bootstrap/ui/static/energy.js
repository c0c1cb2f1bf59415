// The energy view: hosts powered on over time against the number the VMs need, with every
// wake-up and power-down as it happens.
import { h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// The fewest hosts that could hold what is requested: per dimension (cpu, memory), the sum
// of the requests over the largest host's capacity, rounded up. A lower bound.
export function needed(lcs) {
  let need = 0;
  for (const dim of [0, 1]) {
    const biggest = Math.max(0, ...lcs.map((lc) => Number(lc.totalCapacity?.[dim]) || 0));
    const sum = lcs.reduce((acc, lc) => acc + (Number(lc.requestedCapacity?.[dim]) || 0), 0);
    if (biggest > 0 && sum > 0) need = Math.max(need, Math.ceil(sum / biggest - 1e-9));
  }
  return need;
}

export class EnergyView {
  constructor(root) {
    this.root = root;
    this.samples = []; // {t, on, needed, total}
    this.power = []; // {t, kind, lc}
    this.windowSeconds = 600;
  }

  sample(t, lcs) {
    const on = lcs.filter((lc) => lc.status === "ACTIVE").length;
    const point = { t, on, needed: needed(lcs), total: lcs.length };
    const prev = this.samples[this.samples.length - 1];
    if (prev && prev.on === point.on && prev.needed === point.needed && prev.total === point.total && t - prev.t < 5) return;
    this.samples.push(point);
    const cut = t - 3600;
    while (this.samples.length > 2 && this.samples[1].t < cut) this.samples.shift();
  }

  powerEvent(ev) {
    if (ev.kind !== "HOST_POWERED_DOWN" && ev.kind !== "HOST_WOKEN") return false;
    if (this.power.some((p) => p.id === ev.id)) return false;
    this.power.push({ id: ev.id, t: ev.time, kind: ev.kind, lc: ev.data.localControllerId });
    this.power.sort((a, b) => a.t - b.t);
    if (this.power.length > 1000) this.power.shift();
    return true;
  }

  // The powered-on count before the first sample, read back from the power events: before
  // a power-down one more host was on, before a wake-up one fewer.
  history() {
    const first = this.samples[0];
    if (!first) return [];
    const back = [];
    let on = first.on;
    for (let i = this.power.length - 1; i >= 0; i--) {
      const p = this.power[i];
      if (p.t >= first.t) continue;
      back.push({ t: p.t, on, needed: null, total: first.total });
      on += p.kind === "HOST_POWERED_DOWN" ? 1 : -1;
      on = Math.max(0, on);
    }
    back.push({ t: first.t - this.windowSeconds, on, needed: null, total: first.total });
    return back.reverse();
  }

  render(now) {
    const W = 860, H = 260, L = 40, R = 12, T = 14, B = 28;
    // The window: what this page has seen and the power events it read, 2 minutes to an hour.
    const first = Math.min(now, ...this.samples.map((p) => p.t), ...this.power.map((p) => p.t));
    this.windowSeconds = Math.max(120, Math.min(3600, Math.ceil((now - first + 15) / 60) * 60));
    const points = [...this.history(), ...this.samples];
    const t1 = now;
    const t0 = now - this.windowSeconds;
    const top = Math.max(1, ...points.map((p) => p.total || 0), ...points.map((p) => p.needed || 0));
    const x = (t) => L + ((Math.max(t0, Math.min(t1, t)) - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "hosts powered on over time" });
    for (let v = 0; v <= top; v += Math.max(1, Math.ceil(top / 5))) {
      svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(s("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, String(v)));
    }
    const tick = [30, 60, 120, 300, 600, 900].find((t) => this.windowSeconds / t <= 6) || 900;
    for (let ago = 0; ago <= this.windowSeconds; ago += tick) {
      const label = ago === 0 ? "now" : ago < 60 ? `-${ago} s` : ago % 60 ? `-${(ago / 60).toFixed(1)} min` : `-${ago / 60} min`;
      svg.append(s("text", { x: x(t1 - ago), y: H - 8, class: "axis", "text-anchor": "middle" }, label));
    }
    const step = (key) => {
      let d = "";
      let prev = null;
      for (const p of points) {
        if (p[key] === null || p[key] === undefined) continue;
        d += prev === null ? `M${x(p.t)},${y(p[key])}` : `H${x(p.t)}V${y(p[key])}`;
        prev = p[key];
      }
      return prev === null ? "" : `${d}H${x(t1)}`;
    };
    const total = step("total");
    if (total) svg.append(s("path", { d: total, class: "line total" }));
    const need = step("needed");
    if (need) svg.append(s("path", { d: need, class: "line needed" }));
    const on = step("on");
    if (on) svg.append(s("path", { d: on, class: "line on" }));
    for (const p of this.power) {
      if (p.t < t0) continue;
      const up = p.kind === "HOST_WOKEN";
      const cx = x(p.t);
      const cy = up ? T + 8 : H - B - 8;
      const tri = up ? `${cx - 5},${cy + 5} ${cx + 5},${cy + 5} ${cx},${cy - 5}` : `${cx - 5},${cy - 5} ${cx + 5},${cy - 5} ${cx},${cy + 5}`;
      const mark = s("polygon", { points: tri, class: up ? "mark woken" : "mark down" });
      mark.append(s("title", {}, `${up ? "woken" : "powered down"}: ${p.lc}`));
      svg.append(mark);
    }
    const last = this.samples[this.samples.length - 1];
    const legend = h(
      "div",
      { class: "legend" },
      h("span", { class: "key on" }, `powered on: ${last ? last.on : "?"}`),
      h("span", { class: "key needed" }, `needed: ${last ? last.needed : "?"}`),
      h("span", { class: "key total" }, `hosts: ${last ? last.total : "?"}`),
      h("span", { class: "key woken" }, `▲ wake-ups: ${this.power.filter((p) => p.kind === "HOST_WOKEN").length}`),
      h("span", { class: "key down" }, `▼ power-downs: ${this.power.filter((p) => p.kind === "HOST_POWERED_DOWN").length}`),
    );
    this.root.replaceChildren(legend, svg);
  }
}
