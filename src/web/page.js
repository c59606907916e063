// radstream live view. Loads the current state from the JSON API, then follows /api/events (Server-Sent
// Events) from the next log sequence. Every event is applied at most once (by its per-study sequence), so
// the overlap between the snapshot and the stream, a reconnect's replay or a re-read after `missed` never
// counts twice. Every string from the service is inserted with textContent or as an attribute value:
// never as markup. A service with tokens needs one for its data: open the page as `/?token=<token>`; it
// is sent as `Authorization: Bearer` on fetches and as `?token=` where a browser cannot set a header
// (EventSource, <img>).
"use strict";

(() => {
  const SHOWN_STUDIES = 50;
  const KEPT_STUDIES = 200;
  const OVERLAY_RETRIES = 8;
  const SVG = "http://www.w3.org/2000/svg";
  const TOKEN = new URLSearchParams(location.search).get("token");

  function withToken(url) {
    if (!TOKEN) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
  }

  const state = {
    studies: new Map(), // uid -> study
    lastSequence: 0, // highest log sequence applied or caught up to
    caughtUp: false,
    missed: 0, // events the server reported dropped (then re-read)
    source: null,
    renderPending: false,
  };
  // For people (and the browser tests) who want to look inside.
  window.radstream = state;

  // ---- state ------------------------------------------------------------------------------------

  function studyOf(uid, modality) {
    let s = state.studies.get(uid);
    if (!s) {
      s = {
        uid,
        modality: modality || "",
        seen: new Set(), // study_sequence values applied
        accepted: 0,
        duplicates: 0,
        rejected: [],
        slices: new Map(), // "sop/frame" -> slice finding
        criticals: new Map(), // label -> latest CriticalFinding
        summary: null,
        lastActivity: 0,
        loading: null,
        imgs: new Map(), // overlay <img> kept across renders so images load once
      };
      state.studies.set(uid, s);
    }
    if (!s.modality && modality) s.modality = modality;
    return s;
  }

  function apply(e) {
    if (!e || typeof e.study_instance_uid !== "string") return;
    state.lastSequence = Math.max(state.lastSequence, e.sequence || 0);
    const known = state.studies.has(e.study_instance_uid);
    const s = studyOf(e.study_instance_uid, e.modality);
    // A study seen for the first time in the middle of its log (it was older than the snapshot):
    // read its whole log once.
    if (!known && e.study_sequence > 1) loadStudy(s.uid);
    if (s.seen.has(e.study_sequence)) return;
    s.seen.add(e.study_sequence);
    s.lastActivity = Math.max(s.lastActivity, e.logged_unix_us || 0);
    if (e.accepted) {
      if (e.accepted.duplicate) s.duplicates += 1;
      else s.accepted += 1;
    } else if (e.rejected) {
      s.rejected.push(e.rejected);
    } else if (e.finding) {
      const f = e.finding;
      const key = sliceKey(f.slice);
      if (key && (!s.slices.has(key) || !f.resent)) s.slices.set(key, f);
    } else if (e.critical) {
      const c = e.critical;
      const prev = s.criticals.get(c.label);
      if (!prev || c.revision >= prev.revision) s.criticals.set(c.label, c);
    } else if (e.summary) {
      if (!s.summary || e.summary.revision >= s.summary.revision) s.summary = e.summary;
    }
    scheduleRender();
  }

  function sliceKey(slice) {
    return slice ? slice.sop_instance_uid + "/" + slice.frame : null;
  }

  async function getJSON(url) {
    const headers = { Accept: "application/json" };
    if (TOKEN) headers.Authorization = "Bearer " + TOKEN;
    const r = await fetch(url, { headers });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  function loadStudy(uid) {
    const s = studyOf(uid);
    if (!s.loading) {
      s.loading = getJSON("/api/studies/" + encodeURIComponent(uid))
        .then((body) => {
          if (body.study && body.study.modality) s.modality = body.study.modality;
          for (const e of body.events || []) apply(e);
        })
        .catch((err) => {
          s.loading = null; // try again on its next event
          console.warn("radstream: loading study failed", err);
        });
    }
    return s.loading;
  }

  // ---- the event stream ---------------------------------------------------------------------------

  function setConnection(kind, text) {
    const el = document.getElementById("connection");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function connect(from) {
    if (state.source) state.source.close();
    const es = new EventSource(withToken("/api/events?from=" + from));
    state.source = es;
    es.onopen = () => setConnection("live", "live");
    es.onmessage = (m) => {
      try {
        apply(JSON.parse(m.data));
      } catch (err) {
        console.warn("radstream: bad event", err);
      }
    };
    es.addEventListener("caught_up", (m) => {
      const d = JSON.parse(m.data);
      state.lastSequence = Math.max(state.lastSequence, d.sequence || 0);
      state.caughtUp = true;
      setConnection("live", "live");
    });
    es.addEventListener("missed", (m) => {
      // The page read too slowly: re-read the dropped range from the log (already-applied events are
      // skipped by their sequence).
      const d = JSON.parse(m.data);
      state.missed += d.count;
      connect(d.first_sequence);
    });
    es.onerror = () => {
      if (state.source !== es) return;
      setConnection("reconnecting", "reconnecting…");
      // EventSource reconnects by itself (sending Last-Event-ID) unless the server refused the stream.
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(() => {
          if (state.source === es) connect(state.lastSequence + 1);
        }, 2000);
      }
    };
  }

  async function start() {
    try {
      const rows = await getJSON("/api/studies?limit=" + SHOWN_STUDIES);
      let last = 0;
      for (const r of rows) {
        studyOf(r.study_instance_uid, r.modality);
        last = Math.max(last, r.last_sequence);
      }
      await Promise.all(rows.map((r) => loadStudy(r.study_instance_uid)));
      state.lastSequence = Math.max(state.lastSequence, last);
      scheduleRender();
      connect(last + 1);
    } catch (err) {
      setConnection("reconnecting", "cannot reach the service; retrying…");
      setTimeout(start, 2000);
    }
  }

  // ---- rendering ------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }

  function sliceName(slice) {
    if (!slice) return "slice ?";
    if (slice.instance_number !== null && slice.instance_number !== undefined) {
      return "slice #" + slice.instance_number + (slice.frame ? " frame " + slice.frame : "");
    }
    return "frame " + slice.frame;
  }

  function scheduleRender() {
    if (state.renderPending) return;
    state.renderPending = true;
    setTimeout(() => {
      state.renderPending = false;
      render();
    }, 30);
  }

  // Slices in position order: patient position along the normal when every slice has one, else
  // InstanceNumber, else arrival order.
  function orderedSlices(s) {
    const slices = [...s.slices.values()];
    const all = (f) => slices.length > 0 && slices.every((x) => x.slice && typeof f(x.slice) === "number");
    let pos;
    let axis;
    if (all((sl) => sl.slice_position_mm)) {
      pos = (x) => x.slice.slice_position_mm;
      axis = "slice position (mm)";
    } else if (all((sl) => sl.instance_number)) {
      pos = (x) => x.slice.instance_number;
      axis = "instance number";
    } else {
      const order = new Map(slices.map((x, i) => [x, i]));
      pos = (x) => order.get(x);
      axis = "arrival order";
    }
    return { axis, points: slices.map((f) => ({ f, x: pos(f) })).sort((a, b) => a.x - b.x) };
  }

  function labelsOf(s) {
    const labels = new Map(); // label -> { threshold, critical }
    for (const f of s.slices.values()) {
      for (const sc of f.scores || []) {
        if (!labels.has(sc.label)) labels.set(sc.label, { threshold: sc.threshold, critical: null });
      }
    }
    for (const c of s.criticals.values()) {
      const l = labels.get(c.label);
      if (l) l.critical = c.critical_threshold;
    }
    if (s.summary) {
      for (const ls of s.summary.labels || []) {
        const l = labels.get(ls.label);
        if (l && typeof ls.critical_threshold === "number") l.critical = ls.critical_threshold;
      }
    }
    return labels;
  }

  function plot(s, label, info) {
    const W = 340;
    const H = 130;
    const m = { l: 30, r: 8, t: 8, b: 22 };
    const { axis, points } = orderedSlices(s);
    const pts = points
      .map(({ f, x }) => ({ f, x, sc: (f.scores || []).find((v) => v.label === label) }))
      .filter((p) => p.sc);
    const xs = pts.map((p) => p.x);
    const x0 = Math.min(...xs);
    const x1 = Math.max(...xs);
    const px = (x) => m.l + (x1 > x0 ? ((x - x0) / (x1 - x0)) * (W - m.l - m.r) : (W - m.l - m.r) / 2);
    const py = (y) => m.t + (1 - Math.max(0, Math.min(1, y))) * (H - m.t - m.b);
    const root = svg("svg", {
      width: W,
      height: H,
      viewBox: "0 0 " + W + " " + H,
      role: "img",
      "data-label": label,
    });
    root.appendChild(svg("title", {}, label + " score by " + axis));
    root.appendChild(svg("line", { class: "axis", x1: m.l, y1: py(0), x2: W - m.r, y2: py(0) }));
    root.appendChild(svg("line", { class: "axis", x1: m.l, y1: py(0), x2: m.l, y2: py(1) }));
    root.appendChild(svg("text", { x: 2, y: py(1) + 8 }, "1"));
    root.appendChild(svg("text", { x: 2, y: py(0) }, "0"));
    if (pts.length) {
      root.appendChild(svg("text", { x: m.l, y: H - 6 }, fmt(x0, axis.startsWith("slice") ? 1 : 0)));
      root.appendChild(
        svg("text", { x: W - m.r, y: H - 6, "text-anchor": "end" }, fmt(x1, axis.startsWith("slice") ? 1 : 0)),
      );
      root.appendChild(svg("text", { x: W / 2, y: H - 6, "text-anchor": "middle" }, axis));
    }
    if (typeof info.threshold === "number") {
      root.appendChild(
        svg("line", { class: "threshold", x1: m.l, y1: py(info.threshold), x2: W - m.r, y2: py(info.threshold) }),
      );
    }
    if (typeof info.critical === "number") {
      root.appendChild(
        svg("line", {
          class: "critical-threshold",
          x1: m.l,
          y1: py(info.critical),
          x2: W - m.r,
          y2: py(info.critical),
        }),
      );
    }
    if (pts.length > 1) {
      root.appendChild(
        svg("polyline", {
          class: "trace",
          points: pts.map((p) => px(p.x).toFixed(1) + "," + py(p.sc.score).toFixed(1)).join(" "),
        }),
      );
    }
    for (const p of pts) {
      const dot = svg("circle", {
        class: p.sc.positive ? "point positive" : "point",
        cx: px(p.x).toFixed(1),
        cy: py(p.sc.score).toFixed(1),
        r: p.sc.positive ? 4 : 3,
      });
      dot.appendChild(svg("title", {}, sliceName(p.f.slice) + ": " + fmt(p.sc.score, 3)));
      root.appendChild(dot);
    }
    const caption = label + " (threshold " + fmt(info.threshold, 3) +
      (typeof info.critical === "number" ? ", critical " + fmt(info.critical, 3) : "") + ")";
    return el("figure", { class: "plot" }, root, el("figcaption", {}, caption));
  }

  function overlayImg(s, f) {
    const key = sliceKey(f.slice);
    let img = s.imgs.get(key);
    if (!img) {
      img = el("img", {
        class: "overlay",
        alt: "slice with the finding's box and peak",
      });
      const src = "/api/studies/" + encodeURIComponent(s.uid) + "/overlays/" +
        encodeURIComponent(f.slice.sop_instance_uid) + "/" + Number(f.slice.frame) + ".png";
      // The overlay may be stored a moment after its finding is logged: retry a few times, then say so.
      let tries = 0;
      img.addEventListener("error", () => {
        tries += 1;
        if (tries <= OVERLAY_RETRIES) {
          setTimeout(() => {
            img.src = withToken(src + "?try=" + tries);
          }, 500 * tries);
        } else {
          img.alt = "overlay not available";
          img.classList.add("missing");
        }
      });
      img.src = withToken(src);
      s.imgs.set(key, img);
    }
    return img;
  }

  function findingCard(s, f) {
    const positives = (f.scores || []).filter((sc) => sc.positive);
    const text = positives.map((sc) => {
      let t = sc.label + " " + fmt(sc.score, 3);
      if (sc.peak) t += " · peak (" + fmt(sc.peak.row, 0) + ", " + fmt(sc.peak.col, 0) + ")";
      return t;
    });
    return el(
      "figure",
      {
        class: "finding positive",
        "data-sop": f.slice.sop_instance_uid,
        "data-frame": f.slice.frame,
        "data-instance-number": f.slice.instance_number ?? "",
        "data-labels": positives.map((sc) => sc.label).join(" "),
      },
      f.overlay ? overlayImg(s, f) : null,
      el("figcaption", {}, sliceName(f.slice) + " — " + text.join("; ")),
    );
  }

  function summaryList(s) {
    if (!s.summary) return null;
    const ul = el("ul", { class: "summary-labels" });
    for (const l of s.summary.labels || []) {
      let t = l.label + ": max " + fmt(l.max_score, 3) + " on " + sliceName(l.top_slice) + ", " +
        l.positive_slices + " positive slice" + (l.positive_slices === 1 ? "" : "s");
      for (const g of l.groups || []) {
        t += "; run " + sliceName(g.first) + " – " + sliceName(g.last) + " (" + g.slices + " slices" +
          (typeof g.extent_mm === "number" ? ", " + fmt(g.extent_mm, 1) + " mm" : "") + ")";
      }
      ul.appendChild(el("li", { class: l.positive ? "positive" : "" }, t));
    }
    return ul;
  }

  function statusText(s) {
    if (!s.summary) return ["in-progress", "in progress"];
    const reason = String(s.summary.reason || "").replace("COMPLETION_REASON_", "").toLowerCase().replace(/_/g, " ");
    return ["complete", "complete (" + reason + ")" + (s.summary.revision > 1 ? ", revision " + s.summary.revision : "")];
  }

  function count(name, value, key) {
    return el("span", { class: "count", "data-count": key }, name + " ", el("b", {}, String(value)));
  }

  function studyCard(s) {
    const { points } = orderedSlices(s);
    const positives = points.map((p) => p.f).filter((f) => (f.scores || []).some((sc) => sc.positive));
    const [statusClass, status] = statusText(s);
    const critical = s.criticals.size > 0;
    const card = el("section", {
      class: critical ? "study is-critical" : "study",
      "data-uid": s.uid,
      "data-slices-scored": s.slices.size,
      "data-accepted": s.accepted,
      "data-rejected": s.rejected.length,
      "data-complete": s.summary ? "true" : "false",
      "data-critical": critical ? "true" : "false",
    });
    card.appendChild(el("h2", {}, "Study " + s.uid));
    const when = s.lastActivity ? new Date(s.lastActivity / 1000).toLocaleTimeString() : "";
    card.appendChild(
      el("div", { class: "meta" }, [s.modality || "?", s.summary ? s.summary.series + " series" : "", "last event " + when]
        .filter(Boolean)
        .join(" · ")),
    );
    card.appendChild(
      el(
        "div",
        { class: "progress" },
        count("accepted", s.accepted, "accepted"),
        count("rejected", s.rejected.length, "rejected"),
        count("slices scored", s.slices.size, "slices"),
        count("positive slices", positives.length, "positive"),
        s.duplicates ? count("duplicates", s.duplicates, "duplicates") : null,
        el("span", { class: "status " + statusClass }, status),
      ),
    );
    const plots = el("div", { class: "plots" });
    for (const [label, info] of labelsOf(s)) plots.appendChild(plot(s, label, info));
    card.appendChild(plots);
    if (s.summary && s.summary.outside_model_rules) {
      card.appendChild(el("div", { class: "outside-rules" }, "Outside the model's rules: " + s.summary.outside_model_rules));
    }
    const summary = summaryList(s);
    if (summary) card.appendChild(summary);
    if (s.rejected.length) {
      const ul = el("ul", { class: "rejections" });
      for (const r of s.rejected.slice(-20)) {
        ul.appendChild(el("li", {}, String(r.reason).replace("REJECT_REASON_", "") + ": " + r.message));
      }
      card.appendChild(ul);
    }
    const findings = el("div", { class: "findings" });
    for (const f of positives) findings.appendChild(findingCard(s, f));
    card.appendChild(findings);
    return card;
  }

  function renderCritical(studies) {
    const items = [];
    for (const s of studies) for (const c of s.criticals.values()) items.push([s, c]);
    items.sort((a, b) => (b[1].slice_received_unix_us || 0) - (a[1].slice_received_unix_us || 0));
    const list = document.getElementById("critical-list");
    list.replaceChildren(
      ...items.map(([s, c]) =>
        el(
          "li",
          { class: "critical-item", "data-uid": s.uid, "data-label": c.label },
          c.label + " " + fmt(c.score, 3) + " ≥ critical " + fmt(c.critical_threshold, 3) + " — study …" +
            s.uid.slice(-12) + ", " + sliceName(c.slice) + (c.revision > 1 ? " (revision " + c.revision + ")" : ""),
        )
      ),
    );
    document.getElementById("critical").hidden = items.length === 0;
  }

  function render() {
    const active = [...state.studies.values()]
      .filter((s) => s.seen.size > 0)
      .sort((a, b) => b.lastActivity - a.lastActivity);
    // A page left open all week forgets studies far down the list; one that comes back to life is read
    // again from its log (see apply).
    for (const s of active.slice(KEPT_STUDIES)) state.studies.delete(s.uid);
    const studies = active.slice(0, SHOWN_STUDIES);
    renderCritical(studies);
    const main = document.getElementById("studies");
    document.getElementById("empty").hidden = studies.length > 0;
    const cards = studies.map((s) => {
      try {
        return studyCard(s);
      } catch (err) {
        // One study the page cannot draw must not blank the others.
        console.error("radstream: cannot render study", err);
        return el("section", { class: "study", "data-uid": s.uid }, el("h2", {}, "Study " + s.uid), "(cannot display)");
      }
    });
    for (const old of main.querySelectorAll("section.study")) old.remove();
    for (const c of cards) main.appendChild(c);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
