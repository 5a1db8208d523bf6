/* g3 web page: the maps, drawn with Leaflet (vendored in /static/vendor/leaflet/; no CDN, no build step).
 *
 * The base layer is always there and offline: Natural Earth 1:110m country outlines (the TopoJSON shipped
 * with g3, decoded here to GeoJSON). When the server was started with `g3 serve --map-tiles URL_TEMPLATE`,
 * that tile server's tiles lie on top (the outlines show through where a tile is missing) and the map zooms
 * to street level around a candidate. The settings come from /static/page-config.json.
 *
 * Exposes window.G3Map = { load, settings, WorldMap, colourOf }.
 */
(function () {
  "use strict";

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

  const WORLD = [
    [-57, -170],
    [78, 178],
  ];
  // Zoom levels: the 1:110m outlines say nothing past a region; tiles go down to streets.
  const OUTLINE_MAX_ZOOM = 8;
  const OUTLINE_CLOSE_ZOOM = 5;
  const TILE_CLOSE_ZOOM = 16;

  // --- TopoJSON → GeoJSON -------------------------------------------------------------------------

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

  // A ring whose longitudes jump across the antimeridian is unwrapped (made continuous, so Chukotka and Fiji
  // reach a little past 180°E instead of streaking across the map); a ring around a pole (Antarctica) is
  // closed along it.
  function unwrap(points) {
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
      ring.push([ring[ring.length - 1][0], pole], [ring[0][0], pole], ring[0].slice());
    }
    return ring;
  }

  // One polygon (outer ring, holes) in GeoJSON coordinates.
  function polygon(rings, arcs) {
    return rings.map((r) => ringPoints(r, arcs)).filter((r) => r.length >= 4).map(unwrap);
  }

  function countries(topology) {
    const arcs = decodeArcs(topology);
    const object = topology.objects.countries || Object.values(topology.objects)[0];
    const features = object.geometries
      .filter((g) => g.type === "Polygon" || g.type === "MultiPolygon")
      .map((g) => ({
        type: "Feature",
        properties: { name: (g.properties && g.properties.name) || "" },
        geometry: {
          type: "MultiPolygon",
          coordinates: (g.type === "Polygon" ? [g.arcs] : g.arcs).map((rings) => polygon(rings, arcs)).filter((p) => p.length),
        },
      }));
    return { type: "FeatureCollection", features };
  }

  // --- what the server gives: the outlines and the page's settings ----------------------------------

  let worldPromise = null;
  let settingsPromise = null;

  async function fetchJson(url, what) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(what + " could not be loaded (HTTP " + r.status + ")");
    return r.json();
  }

  /** The country outlines as GeoJSON, fetched once from this server (never from the internet). */
  function load() {
    if (!worldPromise) {
      worldPromise = fetchJson("/static/countries-110m.json", "the world map")
        .then(countries)
        .catch((err) => {
          worldPromise = null;
          throw err;
        });
    }
    return worldPromise;
  }

  /** The map settings of this server: {tiles: URL template or null, attribution, maxZoom}. */
  function settings() {
    if (!settingsPromise) {
      settingsPromise = fetchJson("/static/page-config.json", "the page's settings")
        .then((c) => Object.assign({ tiles: null, attribution: "", maxZoom: 19 }, c.map || {}))
        .catch((err) => {
          settingsPromise = null;
          throw err;
        });
    }
    return settingsPromise;
  }

  // --- the map -----------------------------------------------------------------------------------

  function fmt(lat, lon) {
    return lat.toFixed(4) + ", " + lon.toFixed(4);
  }

  function span(cls, text) {
    const node = document.createElement("span");
    node.className = cls;
    node.textContent = text;
    return node;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
  }

  // Data attributes on a marker's element (what the tests and the legend's colours read).
  function setData(layer, data) {
    const node = layer.getElement();
    for (const [k, v] of Object.entries(data)) node.dataset[k] = v === null || v === undefined ? "" : String(v);
    return node;
  }

  // An SVG marker's data attributes and <title> (read by screen readers and shown on hover).
  function decorate(layer, data, text) {
    const node = setData(layer, data);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = text;
    node.appendChild(title);
  }

  const reducedMotion = () => window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  /**
   * A Leaflet map in `container` with layers of points:
   *   neighbours:  [{lat, lon, kind: "similar"|"dissimilar", label}]
   *   candidates:  [{lat, lon, source, score, rank}]   (sized by score, coloured by source)
   *   predictions: [{lat, lon, label, index, tag}]     (the answer of each photo)
   * The container carries data-zoom, data-lat and data-lon of the current view, and data-tiles.
   */
  class WorldMap {
    constructor(container, label) {
      this.container = container;
      this.label = label;
      this.data = { neighbours: [], candidates: [], predictions: [] };
      this.view = "world"; // "world" | "fit" | "point"
      this.focus = null;
      this.map = null;
      this.tiles = false;
    }

    async init() {
      const [world, conf] = await Promise.all([load(), settings()]);
      this.settings = conf;
      this.tiles = !!conf.tiles;
      const motion = !reducedMotion();
      const map = L.map(this.container, {
        zoomSnap: 0.25,
        minZoom: 0,
        maxZoom: this.tiles ? conf.maxZoom : OUTLINE_MAX_ZOOM,
        maxBounds: [
          [-89, -240],
          [89, 240],
        ],
        maxBoundsViscosity: 0.7,
        worldCopyJump: false,
        attributionControl: false,
        zoomAnimation: motion,
        fadeAnimation: motion,
        markerZoomAnimation: motion,
      });
      this.map = map;
      map.setView([20, 0], 1, { animate: false }); // loaded at once (layers wait for a view), framed in applyView
      L.control
        .attribution({ prefix: '<a href="https://leafletjs.com" rel="noreferrer" target="_blank">Leaflet</a>' })
        .addTo(map);
      map.createPane("countries").style.zIndex = "150"; // under the tiles (200): seen where a tile is missing
      map.createPane("neighbours").style.zIndex = "390"; // under the candidates (overlayPane, 400)
      L.geoJSON(world, {
        pane: "countries",
        interactive: false,
        style: () => ({ className: "country", weight: 0.6, fillOpacity: 1 }),
      }).addTo(map);
      map.attributionControl.addAttribution("Outlines: Natural Earth");
      this.container.dataset.tiles = this.tiles ? "on" : "off";
      if (this.tiles) this.addTiles(conf);
      this.layers = L.layerGroup().addTo(map);
      map.on("zoomend moveend", () => this.report());
      this.watchSize();
      this.draw();
      this.applyView();
      return this;
    }

    addTiles(conf) {
      const layer = L.tileLayer(conf.tiles, {
        attribution: escapeHtml(conf.attribution),
        maxZoom: conf.maxZoom,
        referrerPolicy: "no-referrer",
        noWrap: true, // one world, like the outlines and the markers
      });
      let loaded = 0;
      let failed = 0;
      layer.on("tileload", () => {
        loaded += 1;
        this.container.dataset.tilesLoaded = String(loaded);
      });
      layer.on("tileerror", () => {
        failed += 1;
        this.container.dataset.tilesFailed = String(failed);
        if (!loaded && failed === 4) this.note("Map tiles could not be loaded from the tile server; showing the offline outlines.");
      });
      layer.addTo(this.map);
      this.tileLayer = layer;
    }

    note(text) {
      this.container.dispatchEvent(new CustomEvent("g3-map-note", { detail: text, bubbles: true }));
    }

    report() {
      const c = this.map.getCenter();
      this.container.dataset.zoom = String(this.map.getZoom());
      this.container.dataset.lat = c.lat.toFixed(6);
      this.container.dataset.lon = c.lng.toFixed(6);
    }

    hasSize() {
      return this.container.clientWidth > 0 && this.container.clientHeight > 0;
    }

    /** Follow the container's size (it is created hidden, and the layout settles as the photo and the
     * answer arrive): the world and the candidates are framed again, a single point stays centred. */
    watchSize() {
      if (!window.ResizeObserver || this.observer) return;
      let last = "";
      this.observer = new ResizeObserver(() => {
        const size = this.container.clientWidth + "x" + this.container.clientHeight;
        if (!this.hasSize() || size === last) return;
        last = size;
        this.map.invalidateSize({ animate: false });
        if (this.pending || this.view !== "point") this.applyView();
      });
      this.observer.observe(this.container);
    }

    set(data) {
      this.data = Object.assign({ neighbours: [], candidates: [], predictions: [] }, data);
      this.draw();
      if (this.view !== "world") this.applyView();
    }

    /** "world" or "fit" (frame the candidates and answers). */
    setView(view) {
      this.view = view;
      this.applyView();
    }

    /** Centre on one point, at street level when tiles exist (region level on the outlines alone). */
    zoomTo(lat, lon) {
      this.view = "point";
      this.focus = [lat, lon];
      this.applyView();
    }

    closeZoom() {
      return this.tiles ? Math.min(TILE_CLOSE_ZOOM, this.settings.maxZoom) : OUTLINE_CLOSE_ZOOM;
    }

    applyView() {
      if (!this.map) return;
      this.pending = !this.hasSize();
      if (this.pending) return;
      const animate = !reducedMotion();
      if (this.view === "point" && this.focus) {
        this.map.setView(this.focus, this.closeZoom(), { animate });
        return;
      }
      const pts = this.data.candidates.concat(this.data.predictions).map((p) => [p.lat, p.lon]);
      if (this.view === "fit" && pts.length) {
        const bounds = L.latLngBounds(pts);
        if (bounds.getNorthEast().equals(bounds.getSouthWest())) this.map.setView(bounds.getCenter(), this.closeZoom(), { animate });
        else this.map.fitBounds(bounds, { padding: [28, 28], maxZoom: this.closeZoom(), animate });
        return;
      }
      this.map.fitBounds(WORLD, { animate: false });
    }

    draw() {
      if (!this.map) return;
      const { neighbours, candidates, predictions } = this.data;
      this.container.setAttribute(
        "aria-label",
        this.label +
          ": " +
          predictions.length +
          (predictions.length === 1 ? " predicted point, " : " predicted points, ") +
          candidates.length +
          " candidates, " +
          neighbours.length +
          " retrieved neighbours",
      );
      this.layers.clearLayers();

      for (const n of neighbours) {
        const text = (n.kind === "similar" ? "Similar" : "Dissimilar") + " image at " + fmt(n.lat, n.lon) + (n.label ? " — " + n.label : "");
        const marker = L.marker([n.lat, n.lon], {
          pane: "neighbours",
          icon: L.divIcon({ className: "neighbour " + n.kind, iconSize: [9, 9] }),
          keyboard: false,
          title: text,
          alt: text,
        }).addTo(this.layers);
        setData(marker, { kind: n.kind, lat: n.lat, lon: n.lon });
      }

      const scores = candidates.map((c) => c.score).filter((s) => Number.isFinite(s));
      const lo = scores.length ? Math.min(...scores) : 0;
      const hi = scores.length ? Math.max(...scores) : 1;
      // Largest first, so that small markers stay visible on top.
      const order = candidates.slice().sort((a, b) => (b.score ?? 0) - (a.score ?? 0));
      for (const c of order) {
        const t = Number.isFinite(c.score) && hi > lo ? (c.score - lo) / (hi - lo) : 0.5;
        const radius = +(4 + 7 * t).toFixed(2);
        const marker = L.circleMarker([c.lat, c.lon], {
          radius,
          className: "candidate",
          color: "#1d232b",
          weight: 1,
          fillColor: colourOf(c.source),
          fillOpacity: 0.85,
        }).addTo(this.layers);
        const score = Number.isFinite(c.score) ? ", score " + c.score.toFixed(4) : "";
        const text = "Candidate from " + c.source + " at " + fmt(c.lat, c.lon) + score;
        marker.bindTooltip(span("map-tip", text), { direction: "top", offset: [0, -radius] });
        decorate(marker, { source: c.source, rank: c.rank, score: c.score, lat: c.lat, lon: c.lon, radius, fill: colourOf(c.source) }, text);
      }

      for (const p of predictions) {
        const text = (p.label || "Prediction") + " at " + fmt(p.lat, p.lon);
        const icon = span("prediction-mark", "");
        if (p.tag) icon.append(span("prediction-label", p.tag));
        const marker = L.marker([p.lat, p.lon], {
          icon: L.divIcon({ className: "prediction", html: icon, iconSize: [24, 24] }),
          title: text,
          alt: text,
          zIndexOffset: 1000,
          keyboard: true,
        }).addTo(this.layers);
        setData(marker, { lat: p.lat, lon: p.lon, index: p.index ?? 0 });
      }
    }
  }

  window.G3Map = { load, settings, WorldMap, colourOf };
})();
