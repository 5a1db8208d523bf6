/* g3 web page: a world map drawn as SVG from Natural Earth 1:110m country outlines (TopoJSON).
 *
 * Plain JavaScript, no dependency. Exposes window.G3Map = { load, WorldMap, colourOf }.
 * Projection: equirectangular, x = lon + 180, y = 90 - lat (SVG user units are degrees).
 */
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const WORLD = { x: 0, y: 0, w: 360, h: 180 };

  // Okabe–Ito colours (distinguishable with colour-vision deficiencies), one per candidate source.
  const SOURCE_COLOURS = {
    retrieval: "#0072B2",
    zero_shot: "#E69F00",
    rag_5: "#009E73",
    rag_10: "#CC79A7",
    rag_15: "#56B4E9",
    gallery: "#8C6D1F",
  };
  const SPARE = ["#332288", "#117733", "#882255", "#999933", "#44AA99", "#AA4499", "#6699CC"];
  const assigned = {};

  function colourOf(source) {
    if (SOURCE_COLOURS[source]) return SOURCE_COLOURS[source];
    if (!assigned[source]) assigned[source] = SPARE[Object.keys(assigned).length % SPARE.length];
    return assigned[source];
  }

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function title(node, text) {
    el("title", {}, node).textContent = text;
    return node;
  }

  const px = (lon) => +(lon + 180).toFixed(3);
  const py = (lat) => +(90 - lat).toFixed(3);

  // --- TopoJSON → SVG path data -----------------------------------------------------------------

  function decodeArcs(topology) {
    const t = topology.transform;
    return topology.arcs.map((arc) => {
      let x = 0;
      let y = 0;
      return arc.map(([dx, dy]) => {
        if (!t) return [dx, dy];
        x += dx;
        y += dy;
        return [x * t.scale[0] + t.translate[0], y * t.scale[1] + t.translate[1]];
      });
    });
  }

  function ringPoints(indexes, arcs) {
    const out = [];
    for (const i of indexes) {
      const arc = i >= 0 ? arcs[i] : arcs[~i].slice().reverse();
      for (let j = out.length ? 1 : 0; j < arc.length; j++) out.push(arc[j]);
    }
    return out;
  }

  // A ring as path data. Rings that cross the antimeridian are unwrapped (longitudes made continuous)
  // and drawn again shifted by ±360° (the SVG clips them); a ring around a pole is closed along it.
  function ringPath(points) {
    if (points.length < 3) return "";
    const ring = [[points[0][0], points[0][1]]];
    let offset = 0;
    for (let i = 1; i < points.length; i++) {
      const step = points[i][0] - points[i - 1][0];
      if (step > 180) offset -= 360;
      else if (step < -180) offset += 360;
      ring.push([points[i][0] + offset, points[i][1]]);
    }
    if (offset !== 0) {
      const meanLat = ring.reduce((s, p) => s + p[1], 0) / ring.length;
      const pole = meanLat < 0 ? -90 : 90;
      ring.push([ring[ring.length - 1][0], pole], [ring[0][0], pole]);
    }
    const xs = ring.map((p) => p[0]);
    const shifts = [0];
    if (Math.min(...xs) < -180) shifts.push(360);
    if (Math.max(...xs) > 180) shifts.push(-360);
    return shifts
      .map((s) => "M" + ring.map(([lon, lat]) => px(lon + s) + "," + py(lat)).join("L") + "Z")
      .join("");
  }

  function countryShapes(topology) {
    const arcs = decodeArcs(topology);
    const object = topology.objects.countries || Object.values(topology.objects)[0];
    return object.geometries
      .filter((g) => g.type === "Polygon" || g.type === "MultiPolygon")
      .map((g) => {
        const polygons = g.type === "Polygon" ? [g.arcs] : g.arcs;
        const d = polygons.map((rings) => rings.map((r) => ringPath(ringPoints(r, arcs))).join("")).join("");
        return { name: (g.properties && g.properties.name) || "", d };
      });
  }

  let shapesPromise = null;

  /** The country shapes, fetched once from the server (never from the internet). */
  function load() {
    if (!shapesPromise) {
      shapesPromise = fetch("/static/countries-110m.json")
        .then((r) => {
          if (!r.ok) throw new Error("the world map could not be loaded (HTTP " + r.status + ")");
          return r.json();
        })
        .then(countryShapes)
        .catch((err) => {
          shapesPromise = null;
          throw err;
        });
    }
    return shapesPromise;
  }

  // --- the map -----------------------------------------------------------------------------------

  function fmt(lat, lon) {
    return lat.toFixed(4) + ", " + lon.toFixed(4);
  }

  /**
   * A world map in `container` with layers of points:
   *   neighbours:  [{lat, lon, kind: "similar"|"dissimilar", label}]
   *   candidates:  [{lat, lon, source, score, rank, label}]   (sized by score, coloured by source)
   *   predictions: [{lat, lon, label, index}]                 (the answer of each photo)
   */
  class WorldMap {
    constructor(container, label) {
      this.container = container;
      this.label = label;
      this.data = { neighbours: [], candidates: [], predictions: [] };
      this.view = "world";
      this.shapes = null;
    }

    async init() {
      this.shapes = await load();
      this.draw();
      return this;
    }

    set(data) {
      this.data = Object.assign({ neighbours: [], candidates: [], predictions: [] }, data);
      this.draw();
    }

    setView(view) {
      this.view = view;
      this.draw();
    }

    box() {
      if (this.view !== "fit") return WORLD;
      const pts = this.data.candidates.concat(this.data.predictions);
      if (!pts.length) return WORLD;
      const xs = pts.map((p) => px(p.lon));
      const ys = pts.map((p) => py(p.lat));
      let x0 = Math.min(...xs);
      let x1 = Math.max(...xs);
      let y0 = Math.min(...ys);
      let y1 = Math.max(...ys);
      let w = Math.max((x1 - x0) * 1.3, 24);
      let h = Math.max((y1 - y0) * 1.3, 12);
      if (w < 2 * h) w = 2 * h;
      else h = w / 2;
      if (w >= 360) return WORLD;
      const cx = Math.min(Math.max((x0 + x1) / 2, w / 2), 360 - w / 2);
      const cy = Math.min(Math.max((y0 + y1) / 2, h / 2), 180 - h / 2);
      return { x: cx - w / 2, y: cy - h / 2, w, h };
    }

    /** Redraw when the map's width changes: markers keep their size in screen pixels. */
    watchSize() {
      if (!window.ResizeObserver || this.observer) return;
      let width = this.container.clientWidth;
      this.observer = new ResizeObserver(() => {
        const now = this.container.clientWidth;
        if (Math.abs(now - width) > 8) {
          width = now;
          this.draw();
        }
      });
      this.observer.observe(this.container);
    }

    draw() {
      if (!this.shapes) return;
      this.watchSize();
      const b = this.box();
      // Marker sizes are given in CSS pixels (at ~2 px per degree of the world view) and converted to
      // degrees of the current view, so that they look alike on a phone, a desktop and when zoomed.
      const width = this.container.clientWidth || 720;
      const k = Math.min((2 * b.w) / width, (b.w / 360) * 2.2);
      const { neighbours, candidates, predictions } = this.data;
      const summary =
        this.label +
        ": " +
        predictions.length +
        (predictions.length === 1 ? " predicted point, " : " predicted points, ") +
        candidates.length +
        " candidates, " +
        neighbours.length +
        " retrieved neighbours";
      const svg = el("svg", {
        viewBox: [b.x, b.y, b.w, b.h].map((v) => +v.toFixed(3)).join(" "),
        class: "world",
        role: "img",
        "aria-label": summary,
        preserveAspectRatio: "xMidYMid meet",
      });
      el("rect", { x: -360, y: -180, width: 1080, height: 540, class: "ocean" }, svg);
      const grid = el("g", { class: "graticule" }, svg);
      for (let lon = -150; lon <= 150; lon += 30) el("line", { x1: px(lon), y1: 0, x2: px(lon), y2: 180 }, grid);
      for (let lat = -60; lat <= 60; lat += 30) el("line", { x1: 0, y1: py(lat), x2: 360, y2: py(lat) }, grid);
      const land = el("g", { class: "countries" }, svg);
      for (const s of this.shapes) title(el("path", { d: s.d, class: "country" }, land), s.name);

      const nb = el("g", { class: "layer-neighbours" }, svg);
      const side = 2.2 * k;
      for (const n of neighbours) {
        const node = el(
          "rect",
          {
            x: px(n.lon) - side / 2,
            y: py(n.lat) - side / 2,
            width: side,
            height: side,
            class: "neighbour " + n.kind,
            "data-kind": n.kind,
            "data-lat": n.lat,
            "data-lon": n.lon,
          },
          nb,
        );
        title(node, (n.kind === "similar" ? "Similar" : "Dissimilar") + " image at " + fmt(n.lat, n.lon) + (n.label ? " — " + n.label : ""));
      }

      const cg = el("g", { class: "layer-candidates" }, svg);
      const scores = candidates.map((c) => c.score).filter((s) => Number.isFinite(s));
      const lo = scores.length ? Math.min(...scores) : 0;
      const hi = scores.length ? Math.max(...scores) : 1;
      // Largest first, so that small markers stay visible on top.
      const order = candidates.slice().sort((a, b) => (b.score ?? 0) - (a.score ?? 0));
      for (const c of order) {
        const t = Number.isFinite(c.score) && hi > lo ? (c.score - lo) / (hi - lo) : 0.5;
        const r = (1.3 + 2.7 * t) * k;
        const node = el(
          "circle",
          {
            cx: px(c.lon),
            cy: py(c.lat),
            r: +r.toFixed(3),
            fill: colourOf(c.source),
            class: "candidate",
            "data-source": c.source,
            "data-rank": c.rank ?? "",
            "data-score": c.score ?? "",
            "data-lat": c.lat,
            "data-lon": c.lon,
          },
          cg,
        );
        const score = Number.isFinite(c.score) ? ", score " + c.score.toFixed(4) : "";
        title(node, "Candidate from " + c.source + " at " + fmt(c.lat, c.lon) + score);
      }

      const pg = el("g", { class: "layer-predictions" }, svg);
      for (const p of predictions) {
        const g = el(
          "g",
          { class: "prediction", "data-lat": p.lat, "data-lon": p.lon, "data-index": p.index ?? 0 },
          pg,
        );
        const x = px(p.lon);
        const y = py(p.lat);
        el("circle", { cx: x, cy: y, r: +(4.2 * k).toFixed(3), class: "prediction-ring" }, g);
        el("circle", { cx: x, cy: y, r: +(1.6 * k).toFixed(3), class: "prediction-dot" }, g);
        if (p.tag) {
          const text = el("text", { x: x + 4.8 * k, y: y - 3 * k, class: "prediction-label", "font-size": +(7 * k).toFixed(3) }, g);
          text.textContent = p.tag;
        }
        title(g, (p.label || "Prediction") + " at " + fmt(p.lat, p.lon));
      }
      this.container.replaceChildren(svg);
    }
  }

  window.G3Map = { load, WorldMap, colourOf };
})();
