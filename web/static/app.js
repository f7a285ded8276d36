// The chat page: questions in, cited answers out, sources opened beside the conversation.
// Every piece of article or question text is put on the page as a text node, never as HTML.
"use strict";

(function () {
  const TOP_K = 5;
  // Earlier questions sent with each question, so a follow-up can lean on them (the API's limit).
  const MAX_HISTORY = 8;
  const POLL_MS = 500;
  const OVERLAY_QUERY = window.matchMedia("(max-width: 820px)");
  const REDUCED_MOTION = window.matchMedia("(prefers-reduced-motion: reduce)");

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("index-status"),
    layout: $("layout"),
    library: $("library"),
    libraryToggle: $("library-toggle"),
    libraryToggleCount: $("library-toggle-count"),
    docCount: $("doc-count"),
    docList: $("doc-list"),
    docListStatus: $("doc-list-status"),
    uploadForm: $("upload-form"),
    uploadInput: $("upload-input"),
    uploadButton: $("upload-button"),
    uploadStatus: $("upload-status"),
    tokenField: $("token-field"),
    tokenInput: $("token-input"),
    chat: $("chat"),
    intro: $("intro"),
    scroller: $("conversation-scroll"),
    conversation: $("conversation"),
    askForm: $("ask-form"),
    question: $("question"),
    askButton: $("ask-button"),
    scope: $("scope"),
    newConversation: $("new-conversation"),
    panel: $("source-panel"),
    panelScroll: $("panel-scroll"),
    panelClose: $("panel-close"),
    panelTitle: $("panel-title"),
    panelMeta: $("panel-meta"),
    panelNote: $("panel-note"),
    panelBody: $("panel-body"),
    announcer: $("announcer"),
    header: document.querySelector(".topbar"),
  };

  // --- small helpers -----------------------------------------------------------------------

  /** An element with optional class, text (as a text node), attributes and children. */
  function el(tag, options, children) {
    const node = document.createElement(tag);
    const opts = options || {};
    if (opts.className) node.className = opts.className;
    if (opts.text !== undefined && opts.text !== null) node.appendChild(document.createTextNode(String(opts.text)));
    if (opts.attrs) {
      for (const [name, value] of Object.entries(opts.attrs)) {
        if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
      }
    }
    for (const child of children || []) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function announce(message) {
    // Clearing first makes a repeated message be read again.
    ui.announcer.textContent = "";
    window.setTimeout(() => { ui.announcer.textContent = message; }, 60);
  }

  function scrollBehavior() {
    return REDUCED_MOTION.matches ? "auto" : "smooth";
  }

  const sleep = (ms) => new Promise((resolve) => window.setTimeout(resolve, ms));

  let idCounter = 0;
  const uid = (prefix) => `${prefix}-${++idCounter}`;

  class ApiError extends Error {
    constructor(message, code, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  /** JSON from the API, or an ApiError carrying the API's own message. */
  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options || {}));
    } catch (err) {
      throw new ApiError("Could not reach the server. Check that it is running, then try again.", "network", 0);
    }
    let body = null;
    if ((response.headers.get("content-type") || "").includes("json")) {
      try { body = await response.json(); } catch (err) { body = null; }
    }
    if (!response.ok) {
      const detail = body && body.error && typeof body.error.message === "string" ? body.error.message : null;
      const code = body && body.error && typeof body.error.code === "string" ? body.error.code : "http";
      throw new ApiError(detail || `The server answered with an error (HTTP ${response.status}).`, code, response.status);
    }
    if (body === null) throw new ApiError("The server sent an answer this page cannot read.", "bad_response", response.status);
    return body;
  }

  function formatDate(iso) {
    if (typeof iso !== "string" || !iso) return null;
    if (!/^\d{4}-\d{2}-\d{2}$/.test(iso)) return iso;
    const date = new Date(`${iso}T00:00:00Z`);
    if (Number.isNaN(date.getTime())) return iso;
    return date.toLocaleDateString("en-GB", { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
  }

  /**
   * An article's title; one that had no headline gets its opening words (ending in "…") as a title,
   * shown as such rather than as a headline cut short.
   */
  function titleNode(doc, className) {
    const title = doc.title || doc.doc_id;
    if (!title.endsWith("…")) return el("span", { className, text: title });
    return el("span", { className: `${className || ""} title-opening`.trim(), attrs: { "data-untitled": "true" } }, [
      el("span", { className: "untitled-tag", text: "No headline" }),
      " ",
      el("span", { text: title }),
    ]);
  }

  /** Source and date for a meta line; an article that states neither says so. */
  function sourceParts(doc) {
    if (!doc.source && !doc.published) return [el("span", { className: "unstated", text: "source and date not stated" })];
    return [doc.source || null, dateNode(doc.published)];
  }

  /** Only http(s) addresses become links; anything else (javascript:, data:) is shown as text. */
  function safeHttpUrl(url) {
    if (typeof url !== "string") return null;
    try {
      const parsed = new URL(url);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (err) {
      return null;
    }
  }

  /** " · "-separated metadata: strings become text, nodes stay nodes. */
  function metaLine(className, parts) {
    const line = el("p", { className });
    parts.filter(Boolean).forEach((part, i) => {
      if (i) line.appendChild(el("span", { className: "sep", text: " · ", attrs: { "aria-hidden": "true" } }));
      line.appendChild(typeof part === "string" ? el("span", { text: part }) : part);
    });
    return line;
  }

  function dateNode(iso) {
    const text = formatDate(iso);
    if (!text) return null;
    return el("time", { text, attrs: { datetime: /^\d{4}-\d{2}-\d{2}$/.test(iso) ? iso : null } });
  }

  // --- text with highlights, in code points -----------------------------------------------
  // The API's offsets count Unicode code points (Python); JS strings count UTF-16 units.
  // Array.from splits a string into code points, so slicing that array matches the API.

  const codePoints = (text) => Array.from(text || "");

  /** Code-point [start, end) of `needle` in `cps`, or null. */
  function findCodePoints(cps, needle) {
    if (!needle) return null;
    const text = cps.join("");
    const at = text.indexOf(needle);
    if (at < 0) return null;
    const start = Array.from(text.slice(0, at)).length;
    return { start, end: start + codePoints(needle).length };
  }

  /** A range that really holds `expected`; falls back to searching when offsets disagree. */
  function checkedRange(cps, start, end, expected) {
    if (Number.isInteger(start) && Number.isInteger(end) && start >= 0 && end <= cps.length && start < end) {
      if (expected === undefined || cps.slice(start, end).join("") === expected) return { start, end };
    }
    return expected === undefined ? null : findCodePoints(cps, expected);
  }

  /** The answer's exact words (answer.span, article offsets) as a range of `cps`, which starts at article
   * offset `offset`; null when there is no span or it does not lie inside the sentence's range. */
  function spanRange(cps, answer, offset, sentence) {
    const span = answer && answer.span;
    if (!span) return null;
    const found = checkedRange(cps, span.start - offset, span.end - offset, span.text);
    return found && found.start >= sentence.start && found.end <= sentence.end ? found : null;
  }

  /** The answer sentence as text nodes, its exact answer words in <strong>. */
  function answerSentence(answer) {
    const cps = codePoints(answer.text);
    const words = spanRange(cps, answer, answer.start, { start: 0, end: cps.length });
    if (!words) return [answer.text];
    return [
      cps.slice(0, words.start).join(""),
      el("strong", { className: "answer-span", text: cps.slice(words.start, words.end).join(""),
                     attrs: { "data-testid": "answer-span" } }),
      cps.slice(words.end).join(""),
    ];
  }

  /**
   * Paragraphs (split on blank lines) of `cps` into `container`, with `ranges` ({start, end,
   * className, testid, inner}) wrapped in <mark> elements; a later range marks more strongly, and a
   * range's `inner` ({start, end, testid}, inside it) is shown in bold within the mark.
   */
  function renderParagraphs(container, cps, ranges) {
    const paragraphs = [];
    let start = 0;
    let i = 0;
    while (i < cps.length) {
      if (cps[i] === "\n" && cps[i + 1] === "\n") {
        paragraphs.push([start, i]);
        let j = i;
        while (j < cps.length && cps[j] === "\n") j += 1;
        start = j;
        i = j;
      } else {
        i += 1;
      }
    }
    paragraphs.push([start, cps.length]);
    for (const [pStart, pEnd] of paragraphs) {
      if (pEnd <= pStart) continue;
      const p = el("p");
      const cuts = new Set([pStart, pEnd]);
      for (const r of ranges) {
        if (r.start > pStart && r.start < pEnd) cuts.add(r.start);
        if (r.end > pStart && r.end < pEnd) cuts.add(r.end);
      }
      const points = Array.from(cuts).sort((a, b) => a - b);
      for (let k = 0; k + 1 < points.length; k += 1) {
        const a = points[k];
        const b = points[k + 1];
        const text = cps.slice(a, b).join("");
        const inside = ranges.filter((r) => r.start <= a && b <= r.end);
        if (!inside.length) {
          p.appendChild(document.createTextNode(text));
          continue;
        }
        const strongest = inside[inside.length - 1];
        // A range's `inner` part (the answer's exact words) is shown in bold inside the same mark.
        const inner = strongest.inner;
        const parts = inner && inner.start >= a && inner.end <= b
          ? [cps.slice(a, inner.start).join(""),
             el("strong", { className: "hl-span", text: cps.slice(inner.start, inner.end).join(""),
                            attrs: { "data-testid": inner.testid } }),
             cps.slice(inner.end, b).join("")]
          : [text];
        const mark = el("mark", {
          className: inside.map((r) => r.className).join(" "),
          attrs: { "data-testid": strongest.testid },
        }, parts.filter((part) => part !== ""));
        p.appendChild(mark);
      }
      container.appendChild(p);
    }
  }

  // --- index status and the article list --------------------------------------------------

  let knownDocs = null;

  async function refreshHealth() {
    try {
      const health = await api("/health");
      if (!health.loaded) {
        ui.status.textContent = "No index loaded yet";
        ui.status.dataset.state = "error";
      } else {
        clear(ui.status);
        ui.status.appendChild(el("span", { text: health.documents === 1 ? "1 article" : `${health.documents} articles` }));
        ui.status.appendChild(el("span", { className: "status-extra", text: ` · ${health.passages} passages` }));
        if (health.building) ui.status.appendChild(el("span", { text: " · updating…" }));
        ui.status.dataset.state = "ok";
      }
    } catch (err) {
      ui.status.textContent = "Server unreachable";
      ui.status.dataset.state = "error";
    }
  }

  async function refreshDocuments(highlightNew) {
    let docs;
    try {
      docs = await api("/documents");
    } catch (err) {
      ui.docListStatus.textContent = `Could not load the articles: ${err.message}`;
      ui.docListStatus.hidden = false;
      ui.docListStatus.dataset.state = "error";
      return;
    }
    const previous = knownDocs;
    knownDocs = new Set(docs.map((d) => d.doc_id));
    clear(ui.docList);
    ui.docCount.textContent = String(docs.length);
    ui.libraryToggleCount.textContent = String(docs.length);
    if (!docs.length) {
      ui.docListStatus.textContent = "No articles are indexed yet. Add one below.";
      ui.docListStatus.hidden = false;
    } else {
      ui.docListStatus.hidden = true;
      ui.docListStatus.textContent = "";
    }
    ui.docListStatus.dataset.state = "";
    for (const doc of docs) {
      const isNew = highlightNew && previous && !previous.has(doc.doc_id);
      const button = el("button", {
        className: "doc",
        attrs: { type: "button", "data-testid": "doc-item", "data-doc-id": doc.doc_id },
      }, [
        titleNode(doc, "doc-title"),
        metaLine("doc-meta", [
          ...sourceParts(doc),
          doc.passages === 1 ? "1 passage" : `${doc.passages} passages`,
          isNew ? el("span", { className: "doc-new", text: "new" }) : null,
        ]),
      ]);
      button.addEventListener("click", () => openSource({ docId: doc.doc_id, title: doc.title, trigger: button }));
      const remove = el("button", {
        className: "doc-remove",
        text: "Remove",
        attrs: { type: "button", "data-testid": "doc-remove", "aria-label": `Remove ${doc.title || doc.doc_id}` },
      });
      const item = el("li", { className: isNew ? "doc-item is-new" : "doc-item" }, [button, remove]);
      remove.addEventListener("click", () => confirmRemoval(item, doc, remove));
      ui.docList.appendChild(item);
    }
    renderScopes(docs);
    const added = ui.docList.querySelector(".is-new");
    if (added) added.scrollIntoView({ block: "nearest", behavior: scrollBehavior() });
  }

  // --- removing an article -----------------------------------------------------------------

  /** Ask before removing: the article leaves the index and the articles folder. */
  function confirmRemoval(item, doc, trigger) {
    const old = item.querySelector(".confirm");
    if (old) old.remove();
    const title = doc.title || doc.doc_id;
    const message = el("p", { className: "confirm-text", attrs: { "data-testid": "remove-message" } }, [
      "Remove ", el("strong", { text: title }), " from the index and the articles folder?",
    ]);
    const yes = el("button", { className: "button button-small button-danger", text: "Remove", attrs: { type: "button", "data-testid": "remove-confirm" } });
    const no = el("button", { className: "button button-small", text: "Cancel", attrs: { type: "button", "data-testid": "remove-cancel" } });
    const box = el("div", { className: "confirm", attrs: { role: "group", "aria-label": `Remove ${title}?`, "data-testid": "remove-confirmation" } }, [
      message, el("div", { className: "confirm-actions" }, [yes, no]),
    ]);
    item.appendChild(box);
    no.addEventListener("click", () => { box.remove(); trigger.focus(); });
    yes.addEventListener("click", () => removeArticle(doc, box, message, yes, no));
    no.focus();
  }

  async function removeArticle(doc, box, message, yes, no) {
    const title = doc.title || doc.doc_id;
    const token = ui.tokenInput.value.trim();
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    yes.disabled = true;
    no.disabled = true;
    message.textContent = `Removing ${title}…`;
    try {
      let job = await api(`/documents/${encodeURIComponent(doc.doc_id)}`, { method: "DELETE", headers });
      while (job.status === "queued" || job.status === "running") {
        await sleep(POLL_MS);
        job = await api(`/jobs/${encodeURIComponent(job.job_id)}`);
      }
      if (job.status !== "done") throw new ApiError(job.message || "the index update failed.", "failed", 0);
      docCache.delete(doc.doc_id);
      if (ui.panel.dataset.docId === doc.doc_id) closePanel();
      announce(`Removed ${title}.`);
      uploadState("done", `Removed ${title}.`);
      await Promise.all([refreshDocuments(false), refreshHealth()]);
    } catch (err) {
      yes.disabled = false;
      no.disabled = false;
      if (err.status === 401) {
        ui.tokenField.hidden = false;
        message.textContent = token
          ? "The server did not accept that API token. Check it below, then press Remove again."
          : "This server needs its API token to remove articles. Enter it below, then press Remove again.";
        if (!OVERLAY_QUERY.matches) ui.tokenInput.focus();
      } else {
        message.textContent = `Could not remove ${title}: ${err.message}`;
      }
      message.dataset.state = "error";
    }
  }

  // --- where to search ---------------------------------------------------------------------

  /** The "Search in" choices: all articles, one source, or one article; the choice survives a refresh. */
  function renderScopes(docs) {
    const chosen = ui.scope.value;
    clear(ui.scope);
    ui.scope.appendChild(el("option", { text: "all articles", attrs: { value: "" } }));
    const sources = Array.from(new Set(docs.map((d) => d.source).filter(Boolean))).sort();
    if (sources.length) {
      ui.scope.appendChild(el("optgroup", { attrs: { label: "One source" } },
        sources.map((source) => el("option", { text: source, attrs: { value: `source:${source}` } }))));
    }
    ui.scope.appendChild(el("optgroup", { attrs: { label: "One article" } },
      docs.map((d) => el("option", { text: d.title || d.doc_id, attrs: { value: `doc:${d.doc_id}` } }))));
    ui.scope.value = Array.from(ui.scope.options).some((o) => o.value === chosen) ? chosen : "";
  }

  /** The API filters for the chosen scope, or null for all articles. */
  function scopeFilters() {
    const value = ui.scope.value;
    if (value.startsWith("source:")) return { sources: [value.slice(7)] };
    if (value.startsWith("doc:")) return { doc_ids: [value.slice(4)] };
    return null;
  }

  ui.libraryToggle.addEventListener("click", () => {
    const open = ui.libraryToggle.getAttribute("aria-expanded") !== "true";
    ui.libraryToggle.setAttribute("aria-expanded", String(open));
    ui.library.classList.toggle("library-open", open);
  });

  // --- adding articles --------------------------------------------------------------------

  function uploadState(state, message) {
    ui.uploadStatus.dataset.state = state;
    ui.uploadStatus.textContent = message;
  }

  ui.uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = Array.from(ui.uploadInput.files || []);
    if (!files.length) {
      uploadState("error", "Choose one or more .txt, .md, .html, .htm or .pdf files first.");
      ui.uploadInput.focus();
      return;
    }
    const names = files.map((f) => f.name).join(", ");
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    ui.uploadButton.disabled = true;
    uploadState("working", `Uploading ${names}…`);
    const token = ui.tokenInput.value.trim();
    try {
      const headers = { Accept: "application/json" };
      if (token) headers.Authorization = `Bearer ${token}`;
      let job = await api("/documents", { method: "POST", body: form, headers });
      uploadState("working", `Indexing ${names}… questions still use the current index meanwhile.`);
      while (job.status === "queued" || job.status === "running") {
        await sleep(POLL_MS);
        job = await api(`/jobs/${encodeURIComponent(job.job_id)}`);
      }
      if (job.status === "done") {
        uploadState("done", `Added ${names}. You can ask about it now.`);
        ui.uploadInput.value = "";
        docCache.clear();
        await Promise.all([refreshDocuments(true), refreshHealth()]);
      } else {
        uploadState("error", `Could not add ${names}: ${job.message || "the index update failed."}`);
      }
    } catch (err) {
      if (err.status === 401) {
        // The server keeps additions for whoever holds its API token: ask for it here.
        ui.tokenField.hidden = false;
        uploadState("error", token
          ? `Could not add ${names}: the server did not accept that API token. Check it and try again.`
          : `This server needs its API token to add articles. Enter it above and press "Add to the index" again.`);
        ui.tokenInput.focus();
      } else {
        uploadState("error", `Could not add ${names}: ${err.message}`);
      }
    } finally {
      ui.uploadButton.disabled = false;
    }
  });

  // --- the source panel -------------------------------------------------------------------

  const docCache = new Map();
  let panelRequest = 0;
  let panelTrigger = null;

  function fetchDocument(docId) {
    if (!docCache.has(docId)) {
      const pending = api(`/documents/${encodeURIComponent(docId)}`);
      docCache.set(docId, pending);
      pending.catch(() => docCache.delete(docId));
    }
    return docCache.get(docId);
  }

  function panelIsOpen() {
    return !ui.panel.hidden;
  }

  function applyOverlayMode() {
    const overlay = panelIsOpen() && OVERLAY_QUERY.matches;
    for (const node of [ui.header, ui.library, ui.chat]) {
      if (overlay) node.setAttribute("inert", "");
      else node.removeAttribute("inert");
    }
    ui.panel.setAttribute("aria-modal", overlay ? "true" : "false");
    document.body.classList.toggle("overlay-open", overlay);
  }

  function setActiveCard(card) {
    for (const node of document.querySelectorAll(".card.is-active")) node.classList.remove("is-active");
    if (card) card.classList.add("is-active");
  }

  /**
   * Show an article beside the conversation; `passage` ({start, end, text}) is highlighted and
   * `answer` ({start, end, text}) more strongly, then scrolled into view.
   */
  async function openSource({ docId, title, passage, answer, rank, trigger, card }) {
    const request = ++panelRequest;
    panelTrigger = trigger || null;
    setActiveCard(card || null);
    ui.panel.hidden = false;
    ui.layout.classList.add("panel-open");
    applyOverlayMode();
    ui.panel.dataset.docId = docId;
    ui.panel.dataset.state = "loading";
    ui.panelTitle.textContent = title || docId;
    ui.panelTitle.title = title || docId;
    clear(ui.panelMeta);
    clear(ui.panelNote);
    clear(ui.panelBody);
    ui.panelBody.appendChild(el("p", { className: "panel-loading", text: "Loading the article…" }));
    ui.panelScroll.scrollTop = 0;
    ui.panelClose.focus({ preventScroll: true });

    let doc;
    try {
      doc = await fetchDocument(docId);
    } catch (err) {
      if (request !== panelRequest) return;
      clear(ui.panelBody);
      ui.panelBody.appendChild(el("p", { className: "inline-error", text: `Could not open the article: ${err.message}`, attrs: { role: "alert" } }));
      ui.panel.dataset.state = "error";
      return;
    }
    if (request !== panelRequest) return;

    clear(ui.panelTitle);
    ui.panelTitle.appendChild(titleNode(doc));
    ui.panelTitle.title = doc.title || doc.doc_id;
    const href = safeHttpUrl(doc.url);
    let urlPart = null;
    if (href) {
      urlPart = el("a", { text: "original article", attrs: { href, target: "_blank", rel: "noopener noreferrer" } });
    } else if (doc.url) {
      urlPart = el("span", { className: "plain-url", text: doc.url });
    }
    clear(ui.panelMeta);
    ui.panelMeta.appendChild(metaLine("meta-line", [
      ...sourceParts(doc),
      doc.passages === 1 ? "1 passage" : `${doc.passages} passages`,
      urlPart,
    ]));

    const cps = codePoints(doc.text);
    const ranges = [];
    let passageRange = null;
    if (passage) {
      passageRange = checkedRange(cps, passage.start, passage.end, passage.text);
      if (passageRange) ranges.push(Object.assign({ className: "hl-passage", testid: "panel-passage" }, passageRange));
    }
    let answerRange = null;
    if (answer && passageRange && answer.doc_id === docId) {
      const found = checkedRange(cps, answer.start, answer.end, answer.text);
      if (found && found.start >= passageRange.start && found.end <= passageRange.end) {
        answerRange = found;
        const words = spanRange(cps, answer, 0, found);
        ranges.push(Object.assign({ className: "hl-answer", testid: "panel-answer",
                                    inner: words && Object.assign({ testid: "panel-span" }, words) }, found));
      }
    }

    clear(ui.panelNote);
    if (passageRange) {
      ui.panelNote.appendChild(el("span", { className: "legend legend-passage", text: rank ? `passage [${rank}]` : "passage" }));
      if (answerRange) ui.panelNote.appendChild(el("span", { className: "legend legend-answer", text: "answer sentence" }));
    } else if (passage) {
      ui.panelNote.appendChild(el("span", { text: "The passage is no longer in this article; it may have changed since the question was asked." }));
    }

    clear(ui.panelBody);
    renderParagraphs(ui.panelBody, cps, ranges);
    ui.panel.dataset.state = "ready";

    const target = ui.panelBody.querySelector(".hl-answer") || ui.panelBody.querySelector(".hl-passage");
    if (target) {
      // Wait one frame so the layout exists before scrolling.
      window.requestAnimationFrame(() => {
        if (request === panelRequest) target.scrollIntoView({ block: "center", behavior: scrollBehavior() });
      });
    }
    announce(`Opened ${doc.title || doc.doc_id}${passageRange ? ", with the passage highlighted" : ""}.`);
  }

  function closePanel() {
    if (!panelIsOpen()) return;
    panelRequest += 1;
    ui.panel.hidden = true;
    ui.layout.classList.remove("panel-open");
    applyOverlayMode();
    setActiveCard(null);
    const trigger = panelTrigger;
    panelTrigger = null;
    if (trigger && document.contains(trigger)) trigger.focus();
  }

  ui.panelClose.addEventListener("click", closePanel);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && panelIsOpen()) {
      event.preventDefault();
      closePanel();
    }
  });
  OVERLAY_QUERY.addEventListener("change", applyOverlayMode);

  // --- the conversation -------------------------------------------------------------------

  let asking = false;

  function passageCard(result, index) {
    const p = result.passages[index];
    const answer = result.answer;
    const isAnswer = Boolean(answer) && answer.passage === index;
    const titleId = uid("card-title");
    const textId = uid("card-text");

    const cps = codePoints(p.text);
    const ranges = [];
    if (isAnswer) {
      const found = checkedRange(cps, answer.start - p.start, answer.end - p.start, answer.text);
      if (found) {
        const words = spanRange(cps, answer, p.start, found);
        ranges.push(Object.assign({ className: "hl-answer", testid: "card-answer",
                                    inner: words && Object.assign({ testid: "card-span" }, words) }, found));
      }
    }
    const text = el("div", { className: "card-text", attrs: { id: textId, "data-testid": "card-text" } });
    renderParagraphs(text, cps, ranges);

    const card = el("article", {
      className: `card${isAnswer ? " is-answer" : ""}`,
      attrs: {
        role: "button",
        tabindex: "0",
        "aria-labelledby": titleId,
        "aria-describedby": textId,
        "data-testid": "card",
        "data-doc-id": p.doc_id,
        "data-rank": p.rank,
      },
    }, [
      el("div", { className: "card-head" }, [
        el("span", { className: "card-rank", text: p.rank, attrs: { "aria-hidden": "true" } }),
        el("div", { className: "card-titles" }, [
          el("h4", { className: "card-title", attrs: { id: titleId, "data-testid": "card-title" } }, [
            el("span", { className: "visually-hidden", text: `Passage ${p.rank}: ` }),
            titleNode(p),
          ]),
          // Ranking scores are not comparable across questions, so the page shows none; the API keeps them.
          metaLine("card-meta", sourceParts(p)),
        ]),
        isAnswer ? el("span", { className: "badge", text: "answer" }) : null,
      ]),
      text,
    ]);

    const open = () => openSource({
      docId: p.doc_id,
      title: p.title,
      passage: p,
      answer: answer && answer.passage !== undefined ? Object.assign({ doc_id: result.passages[answer.passage].doc_id }, answer) : null,
      rank: p.rank,
      trigger: card,
      card,
    });
    card.addEventListener("click", () => {
      // Selecting text to copy it should not open the article.
      const selection = window.getSelection();
      if (selection && !selection.isCollapsed && card.contains(selection.anchorNode)) return;
      open();
    });
    card.addEventListener("keydown", (event) => {
      if (event.target !== card) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open();
      }
    });
    card.qaOpen = open;
    return el("li", { className: "card-item" }, [card]);
  }

  function renderResult(reply, result) {
    clear(reply);
    const passages = Array.isArray(result.passages) ? result.passages : [];
    // The API's answer.passage is the cited passage's rank; the page works with its index.
    const cited = result.answer ? passages.findIndex((p) => p.rank === result.answer.passage) : -1;
    const answer = cited >= 0 ? Object.assign({}, result.answer, { passage: cited }) : null;
    const safeResult = Object.assign({}, result, { answer, passages });

    const items = passages.map((_, i) => passageCard(safeResult, i));
    const cards = items.map((item) => item.firstChild);

    if (result.followup && result.resolved_question && result.resolved_question !== result.question) {
      reply.appendChild(el("p", { className: "resolved", attrs: { "data-testid": "resolved" } }, [
        "Taken as a follow-up: ", el("q", { text: result.resolved_question }),
      ]));
    } else if (!result.followup && result.resolved_question && result.resolved_question !== result.question) {
      reply.appendChild(el("p", { className: "resolved", attrs: { "data-testid": "resolved" } }, [
        "Searched as: ", el("q", { text: result.resolved_question }),
      ]));
    }
    if (result.filters) {
      reply.appendChild(el("p", { className: "resolved", attrs: { "data-testid": "scope-note" } },
        [`Searched only in ${scopeNoteText(result.filters)}.`]));
    }

    if (answer) {
      const cited = passages[answer.passage];
      const cite = el("button", {
        className: "cite",
        text: String(cited.rank),
        attrs: {
          type: "button",
          "data-testid": "citation",
          "aria-label": `Source ${cited.rank}: ${cited.title || cited.doc_id}`,
          title: `Open ${cited.title || cited.doc_id}`,
        },
      });
      cite.addEventListener("click", () => {
        const card = cards[answer.passage];
        card.qaOpen();
        panelTrigger = cite;
      });
      reply.appendChild(el("div", { className: "answer", attrs: { "data-testid": "answer" } }, [
        el("p", { className: "reply-label", text: "Answer" }),
        el("p", { className: "answer-text" }, [
          el("span", { attrs: { "data-testid": "answer-text" } }, answerSentence(answer)),
          " ",
          cite,
        ]),
        el("p", { className: "answer-source" }, [
          "From ",
          el("cite", { text: cited.title || cited.doc_id }),
          cited.source ? ` · ${cited.source}` : null,
          cited.published ? ` · ${formatDate(cited.published)}` : null,
        ]),
      ]));
    } else {
      reply.appendChild(el("div", { className: "no-answer", attrs: { "data-testid": "no-answer" } }, [
        el("p", { className: "reply-label", text: "No answer" }),
        el("p", { className: "no-answer-text", text: "Nothing in the articles answers this question." }),
        el("p", {
          className: "no-answer-sub",
          text: passages.length ? "These are the closest passages; they may still help." : "No passages came close either.",
        }),
      ]));
    }

    if (passages.length) {
      reply.appendChild(el("h3", {
        className: "passages-heading",
        text: answer ? "Passages" : "Closest passages",
      }));
      reply.appendChild(el("ol", { className: "cards", attrs: { "data-testid": "passages" } }, items));
    }
    const took = typeof result.took_ms === "number" ? `${Math.round(result.took_ms)} ms` : null;
    reply.appendChild(metaLine("reply-foot", [
      passages.length === 1 ? "1 passage" : `${passages.length} passages`,
      took,
      result.mode ? `${result.mode} search` : null,
    ]));

    if (answer) {
      announce(`Answer: ${answer.text} Source ${passages[answer.passage].rank}: ${passages[answer.passage].title}. ${passages.length} passages listed.`);
    } else {
      announce(`Nothing in the articles answers this question. ${passages.length} closest passages listed.`);
    }
  }

  function scopeNoteText(filters) {
    if (filters.doc_ids && filters.doc_ids.length) {
      const option = Array.from(ui.scope.options).find((o) => o.value === `doc:${filters.doc_ids[0]}`);
      return option ? `“${option.textContent}”` : "one article";
    }
    if (filters.sources && filters.sources.length) return `articles from ${filters.sources.join(", ")}`;
    return "the chosen articles";
  }

  function renderError(reply, err, retry) {
    clear(reply);
    const again = el("button", { className: "button button-small", text: "Try again", attrs: { type: "button", "data-testid": "retry" } });
    again.addEventListener("click", retry);
    reply.appendChild(el("div", { className: "inline-error", attrs: { "data-testid": "error" } }, [
      el("p", { className: "reply-label", text: "Something went wrong" }),
      el("p", { className: "error-text", text: err.message, attrs: { "data-testid": "error-text" } }),
      again,
    ]));
    announce(`Error: ${err.message}`);
  }

  function setAsking(value) {
    asking = value;
    ui.askButton.disabled = value;
    ui.askForm.classList.toggle("is-busy", value);
  }

  // Questions asked so far in this conversation, oldest first.
  let history = [];

  async function runQuestion(turn, reply, question, earlier, filters) {
    setAsking(true);
    turn.setAttribute("aria-busy", "true");
    clear(reply);
    reply.appendChild(el("p", { className: "searching", attrs: { "data-testid": "searching" } }, [
      el("span", { className: "dots", attrs: { "aria-hidden": "true" } }, [el("span"), el("span"), el("span")]),
      "Searching the articles…",
    ]));
    announce("Searching the articles…");
    try {
      const result = await api("/ask", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(Object.assign({ question, top_k: TOP_K, history: earlier }, filters ? { filters } : {})),
      });
      renderResult(reply, result);
    } catch (err) {
      renderError(reply, err, () => {
        if (!asking) runQuestion(turn, reply, question, earlier, filters);
      });
    } finally {
      turn.removeAttribute("aria-busy");
      setAsking(false);
    }
    turn.scrollIntoView({ block: "start", behavior: scrollBehavior() });
  }

  function ask(question) {
    ui.intro.hidden = true;
    const reply = el("div", { className: "reply", attrs: { "data-testid": "reply" } });
    const turn = el("li", { className: "turn", attrs: { "data-testid": "turn" } }, [
      el("div", { className: "question-bubble" }, [
        el("p", { className: "visually-hidden", text: "You asked:" }),
        el("p", { className: "question-text", text: question, attrs: { "data-testid": "question-text" } }),
      ]),
      reply,
    ]);
    ui.conversation.appendChild(turn);
    const earlier = history.slice(-MAX_HISTORY);
    history = history.concat([question]).slice(-MAX_HISTORY);
    ui.newConversation.hidden = false;
    const done = runQuestion(turn, reply, question, earlier, scopeFilters());
    // The searching line is in place now: bring the new question and it into view.
    turn.scrollIntoView({ block: "end", behavior: scrollBehavior() });
    return done;
  }

  function autoGrow() {
    ui.question.style.height = "auto";
    ui.question.style.height = `${Math.min(ui.question.scrollHeight, 200)}px`;
  }

  ui.askForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = ui.question.value.trim();
    if (!question || asking) {
      ui.question.focus();
      return;
    }
    ui.question.value = "";
    autoGrow();
    ask(question);
  });

  ui.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.askForm.requestSubmit();
    }
  });
  ui.question.addEventListener("input", autoGrow);

  // Later questions stop leaning on the earlier ones; what was asked stays on the page.
  ui.newConversation.addEventListener("click", () => {
    history = [];
    ui.newConversation.hidden = true;
    ui.conversation.appendChild(el("li", { className: "conversation-break", attrs: { "data-testid": "conversation-break" } },
      ["New conversation: the questions below do not refer to the ones above."]));
    announce("New conversation started.");
    ui.question.focus();
  });

  // --- start ------------------------------------------------------------------------------

  refreshHealth();
  refreshDocuments(false);
})();
