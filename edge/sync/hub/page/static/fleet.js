// The fleet page: renders the hub's snapshot (/api/fleet) and follows live updates (/api/events).
"use strict";
(function () {
  const COLORS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function secs(v) { return v === null || v === undefined ? "-" : v.toFixed(1) + " s ago"; }
  function colorOf(i) { return COLORS[i % COLORS.length]; }

  function row(d, i) {
    const tr = el("tr");
    tr.dataset.device = d.device;
    tr.dataset.state = d.state;
    const cell = (text, field, cls) => { const td = el("td", text, cls); td.dataset.field = field; tr.appendChild(td); return td; };
    const name = cell("", "device");
    const dot = el("span", "\u25cf"); dot.style.color = colorOf(i); name.append(dot, " ", d.device);
    cell("", "state").appendChild(el("span", d.state, "state " + d.state));
    cell(secs(d.heartbeat_age_s), "heartbeat", "num");
    cell(d.link + (d.last_seen_s !== null ? " (" + d.last_seen_s.toFixed(1) + " s)" : ""), "link");
    cell(d.lag, "lag", "num");
    const desired = d.desired || {};
    cell(d.components.map(c => c.name + " " + c.version + " / " + (desired[c.name] || "-")).join(", ") || "-", "components");
    cell(d.models.map(m => m.name + " " + (m.version || "?")).join(", ") || "-", "models");
    cell(d.faults, "faults", "num");
    cell(d.denied, "denied", "num");
    return tr;
  }

  function plot(svg, points, kx, ky) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 400, H = 300, PAD = 56;
    if (!points.length) {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", W / 2); t.setAttribute("y", H / 2); t.setAttribute("text-anchor", "middle");
      t.textContent = "no positions"; svg.appendChild(t); return;
    }
    let x0 = Math.min(...points.map(p => p[kx])), x1 = Math.max(...points.map(p => p[kx]));
    let y0 = Math.min(...points.map(p => p[ky])), y1 = Math.max(...points.map(p => p[ky]));
    const span = Math.max(x1 - x0, y1 - y0, 1e-6);
    const s = Math.min((W - 2 * PAD) / span, (H - 2 * PAD) / span);
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    for (const p of points) {
      const c = document.createElementNS(SVG, "circle");
      c.setAttribute("cx", (W / 2 + (p[kx] - cx) * s).toFixed(1));
      c.setAttribute("cy", (H / 2 - (p[ky] - cy) * s).toFixed(1));
      c.setAttribute("r", 5);
      c.setAttribute("fill", p.online ? p.color : "#bbb");
      c.setAttribute("stroke", p.color);
      c.dataset.device = p.device; c.dataset.entity = p.entity;
      const title = document.createElementNS(SVG, "title");
      title.textContent = p.device + "/" + p.entity; c.appendChild(title);
      svg.appendChild(c);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", (W / 2 + (p[kx] - cx) * s + 8).toFixed(1));
      label.setAttribute("y", (H / 2 - (p[ky] - cy) * s + 4).toFixed(1));
      label.textContent = p.device + "/" + p.entity;
      svg.appendChild(label);
    }
  }

  function render(snap) {
    const rows = document.getElementById("rows");
    const tbody = el("tbody"); tbody.id = "rows";
    const geo = [], local = [], faults = [];
    snap.devices.forEach((d, i) => {
      tbody.appendChild(row(d, i));
      for (const p of d.positions) {
        const q = Object.assign({ device: d.device, color: colorOf(i), online: d.state === "online" }, p);
        if (p.lat !== undefined) geo.push(q); else local.push(q);
      }
      for (const f of d.recent_faults) faults.push(Object.assign({ device: d.device }, f));
    });
    rows.replaceWith(tbody);
    document.getElementById("empty").hidden = snap.devices.length > 0;
    const c = snap.counts || {};
    document.getElementById("counts").textContent =
      (c.online || 0) + " online, " + (c.offline || 0) + " offline, " + (c.never || 0) + " never seen";
    document.getElementById("hub").textContent = "hub " + snap.hub;
    document.getElementById("updated").textContent = "updated " + new Date(snap.t * 1000).toLocaleTimeString();
    document.body.dataset.t = snap.t;
    plot(document.getElementById("geo"), geo, "lon", "lat");
    plot(document.getElementById("local"), local, "x", "y");
    const ul = el("ul"); ul.id = "faults";
    faults.sort((a, b) => (b.t || 0) - (a.t || 0));
    for (const f of faults.slice(0, 20)) {
      const li = el("li", (f.t ? new Date(f.t * 1000).toLocaleTimeString() + " " : "") + f.device + " " + f.subject.split(".").slice(3).join(".") + ": " + f.what + " " + f.message);
      li.dataset.device = f.device; ul.appendChild(li);
    }
    if (!faults.length) ul.appendChild(el("li", "none"));
    document.getElementById("faults").replaceWith(ul);
  }

  function live(state) {
    document.body.dataset.live = state;
    document.getElementById("live").textContent = state;
  }

  fetch("/api/fleet").then(r => r.json()).then(render).catch(() => {});
  const es = new EventSource("/api/events");
  es.addEventListener("fleet", ev => { live("live"); render(JSON.parse(ev.data)); });
  es.onerror = () => live("reconnecting");
})();
