// Small DOM and formatting helpers: text is always set as text, never as markup.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function replace(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

export const DIMENSIONS = ["cpu", "memory", "rx", "tx"];

export function amount(dim, v) {
  v = Number(v) || 0;
  if (dim === 0) return `${Math.round(v * 10) / 10}`;
  if (dim === 1) return v >= 1048576 ? `${(v / 1048576).toFixed(1)} GiB` : `${Math.round(v / 1024)} MiB`;
  return v >= 1024 ? `${(v / 1024).toFixed(1)} MiB/s` : `${Math.round(v)} KiB/s`;
}

// One capacity bar: used and requested over total, of one dimension.
export function bar(dim, used, requested, total) {
  const pct = (x) => (total > 0 ? Math.min(100, (100 * (Number(x) || 0)) / total) : 0);
  const req = h("span", { class: "req" });
  const use = h("span", { class: "use" });
  req.style.width = `${pct(requested)}%`;
  use.style.width = `${pct(used)}%`;
  return h(
    "span",
    {
      class: `bar bar-${DIMENSIONS[dim]}`,
      title: `${DIMENSIONS[dim]}: used ${amount(dim, used)} / requested ${amount(dim, requested)} / total ${amount(dim, total)}`,
    },
    h("span", { class: "label" }, DIMENSIONS[dim]),
    h("span", { class: "track" }, req, use),
  );
}

export function when(seconds) {
  const d = new Date(seconds * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

export function badge(status) {
  return h("span", { class: `badge s-${String(status || "UNKNOWN").toLowerCase()}` }, status || "UNKNOWN");
}

// A paged, filtered table: rows() gives the filtered rows, render(row) a <tr>.
export class Pager {
  constructor(root, { pageSize = 50, columns, render, emptyText = "nothing" }) {
    this.root = root;
    this.page = 0;
    this.pageSize = pageSize;
    this.columns = columns;
    this.render = render;
    this.emptyText = emptyText;
    this.rows = [];
  }

  show(rows) {
    this.rows = rows;
    const pages = Math.max(1, Math.ceil(rows.length / this.pageSize));
    if (this.page >= pages) this.page = pages - 1;
    const start = this.page * this.pageSize;
    const body = rows.slice(start, start + this.pageSize).map((r) => this.render(r));
    const table = h(
      "table",
      {},
      h("thead", {}, h("tr", {}, this.columns.map((c) => h("th", {}, c)))),
      h("tbody", {}, body.length ? body : h("tr", {}, h("td", { colspan: this.columns.length, class: "empty" }, this.emptyText))),
    );
    const nav = h(
      "div",
      { class: "pager" },
      h("button", { type: "button", disabled: this.page === 0, onclick: () => this.go(-1) }, "‹ prev"),
      h("span", { class: "pageinfo" }, `${rows.length ? start + 1 : 0}–${Math.min(rows.length, start + this.pageSize)} of ${rows.length}`),
      h("button", { type: "button", disabled: this.page >= pages - 1, onclick: () => this.go(1) }, "next ›"),
    );
    replace(this.root, table, nav);
  }

  go(delta) {
    this.page += delta;
    this.show(this.rows);
  }
}
