/* g3 web page: locate photos through this server's OpenAI-compatible API, step by step.
 *
 * Plain JavaScript, no build step, no dependency, nothing from the internet. The API key (when the server
 * wants one) is typed by the user, kept in sessionStorage and sent as "Authorization: Bearer …".
 */
(function () {
  "use strict";

  const STEP = window.G3Steps; // the server's step names (/static/steps.js, from g3.agent.progress.Step)
  const KEY_STORAGE = "g3.apiKey";
  const CONCURRENCY = 2; // photos located at once in a batch
  const THUMBS = 15; // neighbour thumbnails fetched per photo
  const $ = (id) => document.getElementById(id);

  const state = {
    model: "g3",
    jobs: [], // the current run: one job per photo
    run: null, // the run in progress: {controller, signal, jobs}
    shown: null, // the job shown in the single view
    thumbs: "unknown", // "unknown" | "on" | "off": does the server serve the index's images?
    objectUrls: [],
    singleMap: null,
    batchMap: null,
  };

  // --- small helpers -------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function swatch(colour, shape) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 10 10");
    svg.setAttribute("class", "swatch");
    svg.setAttribute("aria-hidden", "true");
    const mark = document.createElementNS("http://www.w3.org/2000/svg", shape === "square" ? "rect" : "circle");
    if (shape === "square") {
      mark.setAttribute("x", "2");
      mark.setAttribute("y", "2");
      mark.setAttribute("width", "6");
      mark.setAttribute("height", "6");
    } else {
      mark.setAttribute("cx", "5");
      mark.setAttribute("cy", "5");
      mark.setAttribute("r", shape === "ring" ? "3.5" : "4");
    }
    if (shape === "ring") mark.setAttribute("class", "swatch-ring");
    else if (colour) mark.setAttribute("fill", colour);
    if (shape === "square") mark.setAttribute("class", "swatch-" + colour);
    svg.appendChild(mark);
    return svg;
  }

  const num = (x, digits) => (Number.isFinite(x) ? x.toFixed(digits) : "");
  const hemi = (lat, lon) =>
    Math.abs(lat).toFixed(4) + "° " + (lat >= 0 ? "N" : "S") + ", " + Math.abs(lon).toFixed(4) + "° " + (lon >= 0 ? "E" : "W");
  const place = (p) => {
    if (!p.address) return "";
    return ["city", "state", "country"].map((k) => p.address[k]).filter(Boolean).join(", ");
  };

  const isDegraded = (p) => !!(p && (p.degraded || (p.degradations && p.degradations.length)));
  const degradations = (p) => (p && p.degradations) || [];
  // A withheld answer (the user's minimum confidence was not met) has no coordinates, only why.
  const isWithheld = (p) => !!(p && p.withheld && p.withheld.length);
  const RADII = ["25", "200", "750"];
  const percent = (x) => (Number.isFinite(x) ? Math.round(100 * x) + " %" : "");
  /** "P(≤25 km) 41 %, P(≤200 km) 63 %, …" of a prediction's calibrated confidence; "" without one. */
  const confidenceText = (p) =>
    p && p.confidence
      ? RADII.filter((r) => Number.isFinite(p.confidence[r])).map((r) => "P(≤" + r + " km) " + percent(p.confidence[r])).join(", ")
      : "";

  /** The minimum confidence the user asked for ({"200": 0.8}), or null to always answer. */
  function minConfidence() {
    const radius = $("min-radius").value;
    const value = Number($("min-probability").value);
    if (!radius || !Number.isFinite(value)) return null;
    return { [radius]: Math.min(Math.max(value, 0), 100) / 100 };
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  /** Show `text` (a sentence for people); `details` (the server's own words, for its operator) fold out. */
  function showError(text, details) {
    const box = $("error");
    const parts = text ? [h("p", { class: "error-text", text })] : [];
    if (text && details) {
      parts.push(h("details", { class: "error-details" }, h("summary", { text: "Technical details" }), h("code", { text: details })));
    }
    box.replaceChildren(...parts);
    box.hidden = !text;
  }

  // --- the API key --------------------------------------------------------------------------------

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {
      return "";
    }
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) headers["Authorization"] = "Bearer " + key;
    return headers;
  }

  function askForKey(message) {
    const panel = $("key-panel");
    $("key-message").textContent = message;
    panel.hidden = false;
    $("key-button").setAttribute("aria-expanded", "true");
    $("key-input").focus();
  }

  function hideKeyPanel() {
    $("key-panel").hidden = true;
    $("key-button").setAttribute("aria-expanded", "false");
  }

  class ApiError extends Error {
    constructor(message, status, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function errorFrom(response) {
    let message = "";
    let code = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || "";
        code = body.error.code || null;
      }
    } catch (e) {
      /* not JSON */
    }
    const error = new ApiError(message || "the server answered HTTP " + response.status, response.status, code);
    if (response.status === 401) {
      askForKey(apiKey() ? "The server refused this API key; enter a valid one." : "This server needs an API key.");
    }
    return error;
  }

  async function checkServer() {
    try {
      const r = await fetch("/v1/models", { headers: authHeaders() });
      if (!r.ok) throw await errorFrom(r);
      const body = await r.json();
      if (body.data && body.data.length) state.model = body.data[0].id;
      $("server-status").textContent = "Model " + state.model + (apiKey() ? " · key set" : "");
      return true;
    } catch (err) {
      $("server-status").textContent = err.status === 401 ? "API key needed" : "Server unreachable";
      if (err.status !== 401) showError("Cannot reach the g3 API: " + err.message);
      return false;
    }
  }

  // --- errors in words for people ------------------------------------------------------------------

  /** A sentence saying what went wrong with photo `name` and what to do; the API's message is for clients. */
  function humanError(err, name) {
    const q = "“" + name + "”";
    switch (err.code) {
      case "empty_file":
        return q + " is empty (0 bytes). Choose a photo file.";
      case "not_an_image_file":
        return q + " is not an image file (" + err.message + "). Choose a JPEG, PNG or WebP photo.";
      case "unreadable_file":
        return q + " could not be read by the browser. Choose the photo again.";
      case "bad_data_url":
      case "invalid_image":
        return q + " is not a photo this server can read: its contents are not a JPEG, PNG, WebP, GIF, TIFF or BMP image. Choose a photo file.";
      case "image_too_large":
      case "body_too_large":
        return q + " is too large for this server. Choose a smaller photo, or ask the server's operator to raise --max-image-mb.";
      case "timeout":
        return "Locating " + q + " took longer than this server allows. Try again, or ask the server's operator to raise --timeout.";
      case "queue_full":
        return "The server is busy with other photos. Try " + q + " again in a minute.";
      case "shutting_down":
        return "The server is shutting down. Try " + q + " again when it is back.";
      case "invalid_api_key":
        return "This server needs a valid API key: enter it under API key at the top, then choose " + q + " again.";
      case "network":
        return "The connection to the g3 server broke while locating " + q + ". Is the server still running?";
      case "pipeline_error":
        return "The server could not locate " + q + ": " + err.message;
      case "internal_error":
        return "The server hit an internal error while locating " + q + "; its log says more.";
      default:
        return "Could not locate " + q + ". The server said: " + err.message;
    }
  }

  /** The server's own words (message and code), shown folded for whoever runs it. */
  function technical(err) {
    return (err.message || String(err)) + (err.code ? " (" + err.code + (err.status ? ", HTTP " + err.status : "") + ")" : "");
  }

  /** A file the page refuses before sending it: empty, or not an image by its type. */
  function refusal(file) {
    if (!file.size) return new ApiError("the file has 0 bytes", 0, "empty_file");
    if (!file.type || !file.type.startsWith("image/")) return new ApiError(file.type || "unknown type", 0, "not_an_image_file");
    return null;
  }

  /** Whether the browser can show `dataUrl` as an image (a preview is shown only then: no broken images). */
  function decodable(dataUrl) {
    const img = new Image();
    img.src = dataUrl;
    return img.decode().then(
      () => true,
      () => false,
    );
  }

  // --- one photo through the streaming API ---------------------------------------------------------

  function readAsDataURL(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new ApiError("the file could not be read", 0, "unreadable_file"));
      reader.readAsDataURL(file);
    });
  }

  /** POST the photo with stream: true; call onStep({step, data}) per finished step; return the prediction. */
  async function locate(dataUrl, onStep, signal) {
    const body = {
      model: state.model,
      stream: true,
      response_format: { type: "json_object" },
      ...(minConfidence() ? { min_confidence: minConfidence() } : {}),
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "Where was this photo taken?" },
            { type: "image_url", image_url: { url: dataUrl } },
          ],
        },
      ],
    };
    let response;
    try {
      response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(body),
        signal,
      });
    } catch (err) {
      if (signal && signal.aborted) throw err;
      throw new ApiError(err.message || "the request failed", 0, "network");
    }
    if (!response.ok) throw await errorFrom(response);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let content = "";
    let done = false;

    function handle(event) {
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) return;
      if (data === "[DONE]") {
        done = true;
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message || "the server reported an error", 200, chunk.error.code);
      if (chunk.g3) onStep(chunk.g3);
      for (const choice of chunk.choices || []) {
        if (choice.index === 0 && choice.delta && choice.delta.content) content += choice.delta.content;
      }
    }

    while (!done) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (signal && signal.aborted) throw err;
        throw new ApiError(err.message || "the answer stream broke off", 0, "network");
      }
      const { value, done: finished } = chunk;
      if (value) buffer += decoder.decode(value, { stream: true });
      buffer = buffer.replace(/\r\n/g, "\n");
      let cut;
      while (!done && (cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        handle(event);
      }
      if (finished) break;
    }
    if (!content) throw new ApiError("the answer stream ended without an answer", 200, "network");
    return JSON.parse(content);
  }

  // --- steps ---------------------------------------------------------------------------------------

  function describeStep(step, data) {
    const n = (xs) => (xs ? xs.length : 0);
    switch (step) {
      case STEP.ENCODE:
        return "Embedded the photo";
      case STEP.RETRIEVE:
        return "Retrieved " + n(data.similar) + " similar and " + n(data.dissimilar) + " dissimilar images";
      case STEP.RENDER:
        return "Wrote " + n(data.prompts) + " prompts: " + (data.prompts || []).join(", ");
      case STEP.GENERATE:
        return (data.responses || [])
          .map((r) =>
            r.error ? "Prompt " + r.prompt + " failed: " + r.error : "Prompt " + r.prompt + ": " + n(r.answers) + " answers",
          )
          .join("; ");
      case STEP.PARSE:
      case STEP.CANDIDATES:
      case STEP.GALLERY:
        return "Collected " + n(data.candidates) + " candidate locations";
      case STEP.VERIFY:
      case STEP.PICK_RANDOM:
      case STEP.RANK:
        if (data.ranked && data.ranked.length) {
          const best = data.ranked[0];
          const how = step === STEP.RANK ? "Ranked " + n(data.ranked) + " candidates with the fitted ranker" : "Scored " + n(data.ranked) + " candidates";
          const sure = confidenceText(data) ? "; " + confidenceText(data) : "";
          return how + "; best " + best[0].toFixed(4) + ", " + best[1].toFixed(4) + " (" + best[2] + ")" + sure;
        }
        return "Scored the candidates";
      case STEP.DESCRIBE:
        return data.address ? "Named the place: " + place({ address: data.address }) : "Named the place";
      case STEP.CHOICES:
        return data.note ? "Answered: " + data.note : "Finished choices";
      default:
        return "Finished " + step;
    }
  }

  function stepItem(s) {
    const li = h("li", { "data-step": s.step }, h("strong", { text: s.step }), " ", describeStep(s.step, s.data || {}));
    if (s.data && Number.isFinite(s.data.seconds)) li.append(" ", h("span", { class: "time", text: s.data.seconds.toFixed(2) + " s" }));
    return li;
  }

  // --- the single view -----------------------------------------------------------------------------

  function neighboursFromStep(data) {
    const rows = (kind, list) =>
      (list || []).map((r) => ({ lat: r[0], lon: r[1], score: r[2], place: r[3] || "", img_id: r[4] || null, kind }));
    return rows("similar", data.similar).concat(rows("dissimilar", data.dissimilar));
  }

  /** What the map of one job shows, from its final prediction or else from the steps seen so far. */
  function mapData(job) {
    const p = job.prediction;
    if (p) {
      return {
        neighbours: p.similar
          .map((n) => ({ lat: n.lat, lon: n.lon, kind: "similar", label: n.place }))
          .concat(p.dissimilar.map((n) => ({ lat: n.lat, lon: n.lon, kind: "dissimilar", label: n.place }))),
        candidates: p.candidates.map((c) => ({ lat: c.lat, lon: c.lon, source: c.source, score: c.score, rank: c.rank })),
        predictions: isWithheld(p) ? [] : [{ lat: p.lat, lon: p.lon, label: "Answer", index: 0 }],
      };
    }
    const data = { neighbours: [], candidates: [], predictions: [] };
    for (const s of job.steps) {
      if (s.step === STEP.RETRIEVE) {
        data.neighbours = neighboursFromStep(s.data).map((n) => ({ lat: n.lat, lon: n.lon, kind: n.kind, label: n.place }));
      } else if (s.data && s.data.candidates) {
        data.candidates = s.data.candidates.map((c) => ({ lat: c[0], lon: c[1], source: c[2], score: NaN }));
      } else if (s.data && s.data.ranked) {
        data.candidates = s.data.ranked.map((c, i) => ({ lat: c[0], lon: c[1], source: c[2], score: c[3], rank: i }));
      }
    }
    return data;
  }

  function renderLegend(job) {
    const legend = $("legend");
    const sources = [];
    const data = mapData(job);
    for (const c of data.candidates) if (!sources.includes(c.source)) sources.push(c.source);
    const items = isWithheld(job.prediction) ? [] : [h("li", {}, swatch(null, "ring"), "Answer")];
    for (const s of sources) items.push(h("li", { "data-source": s }, swatch(G3Map.colourOf(s), "circle"), "Candidate: " + s));
    if (data.neighbours.some((n) => n.kind === "similar")) items.push(h("li", {}, swatch("similar", "square"), "Similar image"));
    if (data.neighbours.some((n) => n.kind === "dissimilar")) items.push(h("li", {}, swatch("dissimilar", "square"), "Dissimilar image"));
    items.push(h("li", { class: "legend-note", text: "Circle size: candidate score" }));
    legend.replaceChildren(...items);
  }

  function renderAnswer(job) {
    const box = $("answer");
    const p = job.prediction;
    if (!p) {
      box.replaceChildren(h("p", { class: "pending", text: job.error ? "No answer." : "Working…" }));
      return;
    }
    const confidence = confidenceText(p);
    if (isWithheld(p)) {
      box.replaceChildren(
        h(
          "div",
          { class: "withheld", role: "alert", "data-withheld": "true" },
          h("h3", { text: "Answer withheld" }),
          h("p", { text: "You asked for a minimum confidence, and this answer does not reach it, so no location is given:" }),
          h("ul", {}, ...p.withheld.map((w) => h("li", { "data-radius": w.radius_km, text: w.message }))),
          confidence ? h("p", { class: "confidence", text: "Calibrated confidence of the withheld answer: " + confidence + "." }) : null,
          h("p", { class: "hint", text: "The candidates and the evidence below are shown as evidence, not as an answer." }),
        ),
      );
      return;
    }
    const where = place(p);
    const dl = h(
      "dl",
      { class: "answer-list" },
      h("dt", { text: "Coordinates" }),
      h("dd", { class: "coords", "data-lat": p.lat, "data-lon": p.lon, text: num(p.lat, 5) + ", " + num(p.lon, 5) }),
      h("dt", { text: "Place" }),
      h("dd", { class: "place", text: where || "unknown" }),
      h("dt", { text: "Score" }),
      h("dd", { class: "score", text: num(p.score, 4) + " (fused verification score of the best candidate)" }),
      h("dt", { text: "Source" }),
      h("dd", { text: p.source }),
      h("dt", { text: "Confidence" }),
      h("dd", {
        class: "confidence",
        text: confidence ? confidence + " (calibrated probability that the answer lies within that distance)" : "not available (the server has no fitted ranker)",
      }),
    );
    box.replaceChildren(h("p", { class: "answer-lead", text: "Most likely taken at " + hemi(p.lat, p.lon) + (where ? " — " + where : "") }), dl);
  }

  function renderDegraded(job) {
    const box = $("degraded");
    const p = job.prediction;
    box.hidden = !isDegraded(p);
    if (box.hidden) {
      box.replaceChildren();
      return;
    }
    const items = degradations(p).map((d) => h("li", { "data-reason": d.reason }, h("code", { text: d.reason }), " ", d.message));
    box.replaceChildren(
      h("h3", { text: "Degraded answer: not G3's full method" }),
      h(
        "p",
        { text: "Part of the pipeline failed for this photo, so the answer below rests on less evidence than G3 uses (often retrieval alone). Treat it with care, and tell the server's operator:" },
      ),
      items.length ? h("ul", {}, ...items) : h("p", { text: "The server marked this answer as degraded without saying why." }),
    );
  }

  /** Centre the map on candidate `c` (street level when the server has map tiles) and mark its row. */
  function showCandidate(c, row) {
    for (const r of $("candidates").tBodies[0].rows) r.removeAttribute("aria-current");
    if (row) row.setAttribute("aria-current", "true");
    for (const b of document.querySelectorAll(".map-tools button")) b.setAttribute("aria-pressed", "false");
    if (!state.singleMap) return;
    state.singleMap.zoomTo(c.lat, c.lon);
    const figure = $("map").closest("figure");
    const box = figure.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) figure.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  function renderCandidates(job) {
    const table = $("candidates");
    const p = job.prediction;
    const rows = p ? p.candidates : [];
    const keys = [];
    for (const c of rows) for (const k of Object.keys(c.components || {})) if (!keys.includes(k)) keys.push(k);
    const head = h(
      "tr",
      {},
      ...["Rank", "Latitude", "Longitude", "Source", "Sample", "Score"].map((t) => h("th", { scope: "col", text: t })),
      ...keys.map((k) => h("th", { scope: "col", text: k })),
    );
    table.tHead.replaceChildren(head);
    const rankButton = (c) => {
      const b = h("button", { type: "button", class: "link", "aria-label": "Show candidate " + (c.rank + 1) + " on the map" }, String(c.rank + 1));
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        showCandidate(c, b.closest("tr"));
      });
      return b;
    };
    table.tBodies[0].replaceChildren(
      ...rows.map((c) =>
        h(
          "tr",
          {
            class: c.rank === 0 ? "best" : null,
            "data-rank": c.rank,
            "data-lat": c.lat,
            "data-lon": c.lon,
            "data-source": c.source,
            "data-score": c.score,
          },
          h("td", {}, rankButton(c)),
          h("td", { text: num(c.lat, 5) }),
          h("td", { text: num(c.lon, 5) }),
          h("td", {}, swatch(G3Map.colourOf(c.source), "circle"), " " + c.source),
          h("td", { text: String(c.sample) }),
          h("td", { text: num(c.score, 4) }),
          ...keys.map((k) => h("td", { text: num((c.components || {})[k], 4) })),
        ),
      ),
    );
    for (const [i, row] of Array.from(table.tBodies[0].rows).entries()) {
      row.addEventListener("click", () => showCandidate(rows[i], row));
    }
  }

  function neighbourItem(n, withThumb) {
    const li = h("li", { class: "neighbour-item", "data-img-id": n.img_id || null });
    if (withThumb) li.append(h("div", { class: "thumb", "aria-hidden": "true" }));
    li.append(
      h(
        "div",
        { class: "neighbour-text" },
        h("span", { class: "n-coords", text: num(n.lat, 4) + ", " + num(n.lon, 4) }),
        h("span", { class: "n-place", text: n.place || "unknown place" }),
        h("span", { class: "n-score", text: "similarity " + num(n.score, 3) }),
      ),
    );
    return li;
  }

  function clearObjectUrls() {
    for (const u of state.objectUrls) URL.revokeObjectURL(u);
    state.objectUrls = [];
  }

  function imageUrl(imgId) {
    return "/v1/g3/images/" + imgId.split("/").map(encodeURIComponent).join("/");
  }

  async function loadThumbs(job, items) {
    if (state.thumbs === "off") return;
    let next = 0;
    let found = 0;
    let missing = 0;
    const note = (text) => {
      $("thumb-note").textContent = text;
      $("thumb-note").hidden = false;
    };
    const worker = async () => {
      // Give up when the first images are all missing: the image folder is not this index's.
      while (next < items.length && state.thumbs !== "off" && state.shown === job && (found || missing < 4)) {
        const li = items[next++];
        const id = li.getAttribute("data-img-id");
        if (!id) continue;
        try {
          const r = await fetch(imageUrl(id), { headers: authHeaders() });
          if (!r.ok) {
            const err = await errorFrom(r);
            li.querySelector(".thumb").remove();
            missing += 1;
            if (err.code === "no_image_root") {
              state.thumbs = "off";
              note("No thumbnails: the server was started without --image-root.");
            } else if (!found && missing >= 4) {
              note("No thumbnails: the server's image folder does not hold these images.");
            }
            continue;
          }
          found += 1;
          state.thumbs = "on";
          const url = URL.createObjectURL(await r.blob());
          state.objectUrls.push(url);
          if (state.shown !== job) return;
          const slot = li.querySelector(".thumb");
          slot.replaceChildren(h("img", { src: url, alt: "", class: "thumb-img" }));
        } catch (e) {
          /* a thumbnail is optional */
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    for (const li of items) {
      const slot = li.querySelector(".thumb");
      if (slot && !slot.firstChild) slot.remove(); // never fetched: no empty boxes
    }
  }

  function renderEvidence(job) {
    const p = job.prediction;
    let similar = [];
    let dissimilar = [];
    if (p) {
      similar = p.similar;
      dissimilar = p.dissimilar;
    } else {
      const retrieve = job.steps.find((s) => s.step === STEP.RETRIEVE);
      if (retrieve) {
        const all = neighboursFromStep(retrieve.data);
        similar = all.filter((n) => n.kind === "similar");
        dissimilar = all.filter((n) => n.kind === "dissimilar");
      }
    }
    const key = similar.map((n) => n.img_id + n.lat).join("|");
    if ($("neighbours").dataset.key === key && similar.length) return; // already shown
    $("neighbours").dataset.key = key;
    clearObjectUrls();
    $("thumb-note").hidden = true;
    const items = similar.map((n, i) => neighbourItem(n, i < THUMBS && state.thumbs !== "off" && !!n.img_id));
    $("neighbours").replaceChildren(...items);
    $("dissimilar").replaceChildren(...dissimilar.map((n) => neighbourItem(n, false)));
    loadThumbs(job, items.filter((li) => li.querySelector(".thumb")));
  }

  function renderWarnings(job) {
    const box = $("warnings");
    const warnings = (job.prediction && job.prediction.warnings) || [];
    box.hidden = !warnings.length;
    box.replaceChildren(...(warnings.length ? [h("h3", { text: "Warnings" }), h("ul", {}, ...warnings.map((w) => h("li", { text: w })))] : []));
  }

  function renderSingle(job) {
    state.shown = job;
    const section = $("single");
    section.hidden = false;
    section.dataset.state = job.status;
    $("single-title").textContent = "Result: " + job.name;
    const photo = $("photo");
    if (!job.preview) {
      photo.hidden = true;
      photo.removeAttribute("src");
    } else if (photo.getAttribute("src") !== job.preview) {
      photo.hidden = false;
      photo.src = job.preview;
      photo.alt = "The photo being located: " + job.name;
    }
    $("steps").replaceChildren(...job.steps.map(stepItem));
    renderDegraded(job);
    renderAnswer(job);
    renderLegend(job);
    if (state.singleMap) state.singleMap.set(mapData(job));
    renderCandidates(job);
    renderEvidence(job);
    renderWarnings(job);
  }

  function onStep(job, s, batch) {
    job.steps.push(s);
    // The single view opens once the server has accepted the photo: a refused one shows no empty map.
    if (!batch && state.shown === null && state.run && state.run.jobs.includes(job)) {
      renderSingle(job);
      return;
    }
    if (state.shown !== job) return;
    $("steps").append(stepItem(s));
    if (s.step === STEP.RETRIEVE) renderEvidence(job);
    if (s.step === STEP.RETRIEVE || (s.data && (s.data.candidates || s.data.ranked))) {
      renderLegend(job);
      if (state.singleMap) state.singleMap.set(mapData(job));
    }
  }

  // --- the batch view ------------------------------------------------------------------------------

  const rowSignature = (job) => job.status + (job.preview ? "+photo" : "");

  function batchRow(job) {
    const p = job.prediction;
    const degraded = isDegraded(p);
    const withheld = isWithheld(p);
    let status = job.status === "error" ? job.error : job.status;
    if (degraded) status = degradations(p).map((d) => d.reason).join(", ") || "done";
    const answered = p && !withheld ? p : null;
    const details = h("button", { type: "button", class: "small ghost", "data-job": job.id, disabled: !p && !job.steps.length }, "Details");
    details.append(h("span", { class: "visually-hidden", text: " for " + job.name }));
    details.addEventListener("click", () => {
      renderSingle(job);
      $("single").scrollIntoView({ behavior: "smooth", block: "start" });
      $("single-title").focus();
    });
    return h(
      "tr",
      {
        "data-index": job.index,
        "data-status": job.status,
        "data-degraded": degraded ? "true" : null,
        "data-withheld": withheld ? "true" : null,
        "data-sig": rowSignature(job),
        class: job.status === "error" ? "failed" : degraded ? "degraded" : withheld ? "withheld" : null,
      },
      h("td", { text: String(job.index + 1) }),
      h(
        "td",
        { class: "name" },
        h("div", { class: "name-box" }, job.preview ? h("img", { src: job.preview, alt: "", class: "row-thumb" }) : null, h("span", { text: job.name, title: job.name })),
      ),
      h(
        "td",
        { class: "status-cell", title: degraded ? degradations(p).map((d) => d.message).join("\n") : job.errorDetails },
        degraded ? h("span", { class: "badge", text: "degraded" }) : null,
        degraded ? " " : null,
        withheld ? h("span", { class: "badge badge-withheld", title: p.withheld_message || "", text: "withheld" }) : null,
        withheld ? " " : null,
        status,
      ),
      h("td", { text: answered ? num(answered.lat, 5) : "" }),
      h("td", { text: answered ? num(answered.lon, 5) : "" }),
      h("td", { class: "place-cell", text: answered ? place(answered) : "" }),
      h("td", { text: answered ? num(answered.score, 4) : "" }),
      h("td", { text: answered ? answered.source : "" }),
      h("td", { class: "confidence-cell", text: confidenceText(p) }),
      h("td", {}, details),
    );
  }

  function renderBatch() {
    const jobs = state.jobs;
    $("batch").hidden = false;
    // Replace only the rows whose photo changed, so that keyboard focus stays where it is.
    const body = $("batch-table").tBodies[0];
    jobs.forEach((job, i) => {
      const row = body.rows[i];
      if (!row) body.append(batchRow(job));
      else if (row.dataset.sig !== rowSignature(job)) row.replaceWith(batchRow(job));
    });
    const done = jobs.filter((j) => j.status === "done").length;
    const failed = jobs.filter((j) => j.status === "error").length;
    const degraded = jobs.filter((j) => isDegraded(j.prediction)).length;
    const withheld = jobs.filter((j) => isWithheld(j.prediction)).length;
    $("batch-progress").textContent =
      done + " of " + jobs.length + " located" + (degraded ? " (" + degraded + " degraded)" : "") +
      (withheld ? ", " + withheld + " withheld" : "") + (failed ? ", " + failed + " failed" : "");
    $("batch").dataset.state = done + failed === jobs.length ? "done" : "running";
    if (state.batchMap) {
      // Photos answered at the same point share one label ("1, 2, 4").
      const groups = new Map();
      for (const j of jobs.filter((j) => j.prediction && !isWithheld(j.prediction))) {
        const at = j.prediction.lat.toFixed(2) + "," + j.prediction.lon.toFixed(2);
        if (!groups.has(at)) groups.set(at, []);
        groups.get(at).push(j);
      }
      const predictions = [];
      for (const group of groups.values()) {
        group.forEach((j, i) =>
          predictions.push({
            lat: j.prediction.lat,
            lon: j.prediction.lon,
            index: j.index,
            tag: i === group.length - 1 ? group.map((g) => g.index + 1).join(", ") : "",
            label: "#" + (j.index + 1) + " " + j.name,
          }),
        );
      }
      state.batchMap.set({ predictions });
    }
  }

  function csvField(v) {
    let s = v === null || v === undefined ? "" : String(v);
    // A text cell starting like a formula is defused for spreadsheets (OWASP's CSV-injection advice).
    if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function batchCsv() {
    const header = ["index", "file", "status", "latitude", "longitude", "place", "score", "source", "p25", "p200", "p750", "withheld", "degraded", "error"];
    const lines = [header.join(",")];
    for (const j of state.jobs) {
      const p = j.prediction;
      const a = p && !isWithheld(p) ? p : null; // a withheld answer has no coordinates
      const why = isDegraded(p) ? degradations(p).map((d) => d.reason).join(" ") || "yes" : "";
      const conf = RADII.map((r) => (p && p.confidence && Number.isFinite(p.confidence[r]) ? p.confidence[r] : ""));
      const withheld = isWithheld(p) ? p.withheld_message || "withheld" : "";
      const row = [j.index + 1, j.name, j.status, a ? a.lat : "", a ? a.lon : "", a ? place(a) : "", a ? a.score : "", a ? a.source : "", ...conf, withheld, why, j.error || ""];
      lines.push(row.map(csvField).join(","));
    }
    return lines.join("\r\n") + "\r\n";
  }

  function batchJson() {
    return JSON.stringify(
      state.jobs.map((j) => ({
        index: j.index + 1,
        file: j.name,
        status: j.status,
        degraded: isDegraded(j.prediction),
        withheld: isWithheld(j.prediction),
        error: j.error || null,
        error_details: j.errorDetails || null,
        prediction: j.prediction,
      })),
      null,
      2,
    );
  }

  function download(text, type, name) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = h("a", { href: url, download: name, class: "visually-hidden" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // --- running photos ------------------------------------------------------------------------------

  async function runJob(job, run) {
    const batch = run.jobs.length > 1;
    if (run.signal.aborted) return;
    const current = () => !run.signal.aborted;
    job.status = "running";
    if (batch) renderBatch();
    else setStatus("Sending " + job.name + "…");
    try {
      const refused = refusal(job.file);
      if (refused) throw refused;
      job.dataUrl = await readAsDataURL(job.file);
      if (await decodable(job.dataUrl)) job.preview = job.dataUrl;
      if (!current()) return;
      if (batch) renderBatch();
      else setStatus("Locating " + job.name + "…");
      job.prediction = await locate(job.dataUrl, (s) => onStep(job, s, batch), run.signal);
      job.status = "done";
    } catch (err) {
      if (!current()) return; // a newer run replaced this one
      job.status = "error";
      job.error = humanError(err, job.name);
      job.errorDetails = technical(err);
      if (!batch) {
        showError(job.error, job.errorDetails);
        // Refused before any step: no result to show (no empty map, no broken photo).
        if (!job.steps.length) $("single").hidden = true;
      }
    }
    if (!current()) return;
    if (batch) renderBatch();
    if (state.shown === job) renderSingle(job);
  }

  async function handleFiles(files) {
    files = Array.from(files || []);
    if (!files.length) return;
    if (state.run) state.run.controller.abort(); // a new choice replaces a run in progress
    const controller = new AbortController();
    const jobs = files.map((file, index) => ({
      id: Date.now() + "-" + index,
      index,
      file,
      name: file.name || "pasted image",
      status: "queued",
      steps: [],
      prediction: null,
      error: null,
      errorDetails: null,
      dataUrl: null,
      preview: null, // the data URL again, when the browser can show it
    }));
    const run = { controller, signal: controller.signal, jobs };
    state.run = run;
    state.jobs = jobs;
    state.shown = null;
    showError("");
    const batch = jobs.length > 1;
    $("single").hidden = true;
    $("batch").hidden = !batch;
    $("batch-table").tBodies[0].replaceChildren();
    if (batch) {
      setStatus("Locating " + jobs.length + " photos, " + CONCURRENCY + " at a time…");
      renderBatch();
      let next = 0;
      const worker = async () => {
        while (next < jobs.length && !run.signal.aborted) await runJob(jobs[next++], run);
      };
      await Promise.all(Array.from({ length: Math.min(CONCURRENCY, jobs.length) }, worker));
      if (run.signal.aborted) return;
      const failed = jobs.filter((j) => j.status === "error").length;
      const degraded = jobs.filter((j) => isDegraded(j.prediction)).length;
      const withheld = jobs.filter((j) => isWithheld(j.prediction)).length;
      setStatus(
        "Batch finished: " + (jobs.length - failed) + " located" + (degraded ? " (" + degraded + " degraded)" : "") +
          (withheld ? ", " + withheld + " answers withheld" : "") + (failed ? ", " + failed + " failed" : "") + ".",
      );
      if (failed) showError(failed + " of " + jobs.length + " photos could not be located; see the Status column.");
    } else {
      const job = jobs[0];
      await runJob(job, run);
      if (run.signal.aborted) return;
      if (job.status !== "done") setStatus("Failed to locate " + job.name + ".");
      else if (isWithheld(job.prediction)) setStatus("Answer withheld for " + job.name + ": below the minimum confidence you asked for.");
      else setStatus("Located " + job.name + (isDegraded(job.prediction) ? ", with a degraded answer (see the warning)." : "."));
    }
  }

  // --- wiring --------------------------------------------------------------------------------------

  function wire() {
    const input = $("file-input");
    $("pick").addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      const files = Array.from(input.files || []);
      input.value = "";
      handleFiles(files);
    });

    const zone = $("drop");
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      handleFiles(e.dataTransfer ? e.dataTransfer.files : []);
    });
    // A photo dropped anywhere else must not replace the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    document.addEventListener("paste", (e) => {
      const target = e.target;
      if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
      const files = Array.from((e.clipboardData && e.clipboardData.files) || []).filter((f) => f.type.startsWith("image/"));
      if (files.length) {
        e.preventDefault();
        handleFiles(files);
      }
    });

    $("key-button").addEventListener("click", () => {
      if ($("key-panel").hidden) askForKey(apiKey() ? "A key is set for this tab; enter another to replace it." : "Enter the API key of this server, if it needs one.");
      else hideKeyPanel();
    });
    $("key-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const value = $("key-input").value.trim();
      if (!value) return;
      try {
        sessionStorage.setItem(KEY_STORAGE, value);
      } catch (err) {
        showError("This browser refuses sessionStorage; the key cannot be kept.");
      }
      $("key-input").value = "";
      if (await checkServer()) {
        hideKeyPanel();
        showError("");
        setStatus("API key accepted.");
        $("pick").focus();
      }
    });
    $("key-forget").addEventListener("click", () => {
      try {
        sessionStorage.removeItem(KEY_STORAGE);
      } catch (err) {
        /* nothing kept */
      }
      setStatus("API key forgotten.");
      checkServer();
    });

    for (const button of document.querySelectorAll(".map-tools button")) {
      button.addEventListener("click", () => {
        for (const b of document.querySelectorAll(".map-tools button")) b.setAttribute("aria-pressed", String(b === button));
        if (state.singleMap) state.singleMap.setView(button.dataset.view);
      });
    }
    $("download-csv").addEventListener("click", () => download(batchCsv(), "text/csv;charset=utf-8", "g3-batch.csv"));
    $("download-json").addEventListener("click", () => download(batchJson(), "application/json", "g3-batch.json"));
    $("single-title").setAttribute("tabindex", "-1");
    $("photo").addEventListener("error", () => {
      $("photo").hidden = true;
    });
    document.addEventListener("g3-map-note", (e) => {
      const note = e.target.closest("figure").querySelector(".map-note");
      note.textContent = e.detail;
      note.hidden = false;
    });
  }

  async function start() {
    wire();
    state.singleMap = new G3Map.WorldMap($("map"), "World map of the answer");
    state.batchMap = new G3Map.WorldMap($("batch-map"), "World map of the batch answers");
    try {
      await Promise.all([state.singleMap.init(), state.batchMap.init()]);
    } catch (err) {
      showError("The map is unavailable: " + err.message);
    }
    await checkServer();
    document.body.dataset.ready = "true";
  }

  start();
})();
