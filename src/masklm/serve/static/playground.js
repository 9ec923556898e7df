// masklm playground: four panels over the server's own JSON routes (relative URLs only).
// Every text from the model or the user goes into the page through textContent, never as HTML.
"use strict";

(() => {
  const KEY_STORE = "masklm-api-key";
  const STRATEGIES = ["mask-predict", "confidence", "diffusion", "autoregressive"];  // when /info has none
  const $ = (id) => document.getElementById(id);
  let info = null;

  const maskToken = () => (info && info.mask_token) || "[MASK]";

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // ---- the server -------------------------------------------------------------------------------

  class ServerError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, body) {
    const headers = {};
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = "Bearer " + key;
    const init = { headers, cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);  // relative: this server only
    } catch (err) {
      throw new ServerError("could not reach the server (" + err.message + ")", 0);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : "the server answered " + response.status;
      throw new ServerError(message, response.status);
    }
    return data;
  }

  function showError(node, err) {
    if (!err) {
      node.hidden = true;
      node.textContent = "";
      return;
    }
    node.textContent = (err.status ? err.status + ": " : "") + err.message;
    node.hidden = false;
  }

  // A panel's form: Enter (or the button) runs it; its error line shows what the server said.
  function panel(name, run) {
    const form = $(name + "-form");
    const error = $(name + "-error");
    const button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (form.classList.contains("busy")) return;
      showError(error, null);
      form.classList.add("busy");
      button.disabled = true;
      try {
        await run();
      } catch (err) {
        showError(error, err);
      } finally {
        form.classList.remove("busy");
        button.disabled = false;
        form.dataset.runs = String(Number(form.dataset.runs || 0) + 1);  // tests wait on this
      }
    });
    return form;
  }

  // Numbers from inputs (the forms do not validate: the server judges, and its message is shown):
  // "" leaves the parameter out (the server's default); anything else goes as is.
  function numberParam(params, name, input) {
    const raw = input.value.trim();
    if (raw !== "") params[name] = Number(raw);
  }

  const percent = (p) => (p >= 0.001 ? (100 * p).toFixed(1) + "%" : "<0.1%");

  // ---- tabs and the API key ---------------------------------------------------------------------

  function showTab(name) {
    for (const tab of document.querySelectorAll("[role=tab]")) {
      const on = tab.dataset.panel === name;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      $("panel-" + tab.dataset.panel).hidden = !on;
    }
    if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
  }

  function setupTabs() {
    for (const tab of document.querySelectorAll("[role=tab]")) {
      tab.addEventListener("click", () => showTab(tab.dataset.panel));
    }
    const wanted = location.hash.slice(1);
    showTab($("panel-" + wanted) ? wanted : "fill");
  }

  function setupKey() {
    const input = $("api-key");
    input.value = sessionStorage.getItem(KEY_STORE) || "";
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
      loadInfo();
    });
  }

  // ---- Model ------------------------------------------------------------------------------------

  async function loadInfo() {
    const banner = $("banner");
    const badge = $("model-badge");
    try {
      info = await api("info");
    } catch (err) {
      info = null;
      badge.textContent = err.status === 401 ? "locked" : "offline";
      banner.textContent = err.status === 401 ? "This server needs an API key: enter it above." : err.message;
      banner.hidden = false;
      showError($("model-error"), err);
      clear($("model-out"));
      return;
    }
    banner.hidden = true;
    showError($("model-error"), null);
    const millions = (info.parameters / 1e6).toFixed(info.parameters < 1e7 ? 2 : 0);
    badge.textContent = [info.model_id || "model", info.arch, millions + "M parameters"].join(" · ");
    renderInfo(info);
    applyInfo(info);
  }

  function row(table, name, value) {
    const tr = el("tr");
    tr.append(el("th", null, name), el("td", null, value));
    table.append(tr);
  }

  function renderInfo(data) {
    const out = $("model-out");
    clear(out);
    const model = el("table", "kv");
    const shift = data.mask_shift
      ? "token j is read at position j - " + data.mask_shift + " (trained with mntp or clm)"
      : "token j is read at position j";
    const rows = [
      ["Model", data.model_id], ["Architecture", data.arch],
      ["Parameters", Number(data.parameters).toLocaleString("en")], ["Vocabulary", data.vocab_size],
      ["Hidden size", data.hidden_size], ["Layers", data.num_hidden_layers],
      ["Attention heads", data.num_attention_heads], ["Feed-forward size", data.intermediate_size],
      ["Max length", data.max_length + " tokens"], ["Mask token", data.mask_token],
      ["Trained with", data.objectives ? data.objectives.join(", ") : "unknown (imported weights)"],
      ["Masks are read", shift], ["Default score metric", data.default_score_metric],
      ["Strategies", (data.strategies || STRATEGIES).join(", ")],
      ["Weights", data.dtype + " on " + data.device],
      ["masklm", data.masklm_version + (data.model_masklm_version ? " (model saved by " + data.model_masklm_version + ")" : "")],
    ];
    for (const [name, value] of rows) row(model, name, value === null || value === undefined ? "-" : value);
    const limits = el("table", "kv");
    for (const [name, value] of Object.entries(data.limits || {})) row(limits, name.replace(/_/g, " "), value);
    out.append(el("h3", null, "Model"), model, el("h3", null, "Server limits"), limits);
  }

  // Fill the controls that depend on the model: mask token, strategies, bounds.
  function applyInfo(data) {
    for (const node of document.querySelectorAll(".mask-name")) node.textContent = data.mask_token;
    const fill = $("fill-text");
    if (!fill.value) fill.value = "the cat " + data.mask_token + " on the mat .";
    const gen = $("gen-text");
    if (!gen.value) gen.value = "the " + data.mask_token + "*4 on the mat";
    $("gen-example").textContent = "The " + data.mask_token + "*5 of the king";
    const select = $("gen-strategy");
    const chosen = select.value;
    clear(select);
    // first: no strategy, so the server picks as masklm generate does (steps given: mask-predict)
    const picked = data.default_strategy ? " (" + data.default_strategy.strategy + ")" : "";
    const automatic = el("option", null, "default" + picked);
    automatic.value = "";
    select.append(automatic);
    for (const name of data.strategies || STRATEGIES) select.append(el("option", null, name));
    select.value = chosen || "";
    const limits = data.limits || {};
    if (limits.max_top_k) $("fill-topk").max = limits.max_top_k;
    if (limits.max_generate_length) $("gen-length").max = limits.max_generate_length;
    if (limits.max_generate_steps) $("gen-steps").max = limits.max_generate_steps;
    const metric = $("score-metric").options[0];
    metric.textContent = "default (" + data.default_score_metric + ")";
    templateHint();
  }

  // ---- Fill mask --------------------------------------------------------------------------------

  async function runFill() {
    const body = { inputs: $("fill-text").value, parameters: {} };
    numberParam(body.parameters, "top_k", $("fill-topk"));
    const data = await api("fill-mask", body);
    renderFill(Array.isArray(data[0]) ? data : [data]);
  }

  function renderFill(perMask) {
    const out = $("fill-out");
    clear(out);
    perMask.forEach((candidates, slot) => {
      const card = el("div", "card");
      card.append(el("h3", null, perMask.length > 1 ? "Mask " + (slot + 1) : "Candidates"));
      const list = el("ol", "candidates");
      for (const c of candidates) {
        const button = el("button", "candidate");
        button.type = "button";
        button.title = "put '" + c.token_str + "' in the text";
        const bar = el("span", "bar");
        const fill = el("span", "bar-fill");
        fill.style.width = Math.max(0.5, 100 * c.score).toFixed(1) + "%";
        bar.append(fill);
        button.append(el("span", "cand-token", c.token_str), bar, el("span", "cand-prob", percent(c.score)));
        button.addEventListener("click", () => placeCandidate(slot, c.token_str));
        const item = el("li");
        item.append(button);
        list.append(item);
      }
      card.append(list);
      out.append(card);
    });
  }

  // Put a candidate in place of the slot-th mask; a word piece (##x) joins the word before it.
  function placeCandidate(slot, tokenStr) {
    const input = $("fill-text");
    const text = input.value;
    const mask = maskToken();
    let at = -1;
    for (let i = 0; i <= slot; i++) {
      at = text.indexOf(mask, at + 1);
      if (at < 0) return;
    }
    let start = at;
    let word = tokenStr.trim();
    if (word.startsWith("##")) {
      word = word.slice(2);
      while (start > 0 && text[start - 1] === " ") start--;
    }
    input.value = text.slice(0, start) + word + text.slice(at + mask.length);
    input.focus();
    if (input.value.includes(mask)) {
      $("fill-form").requestSubmit();
    } else {
      const out = $("fill-out");
      clear(out);
      out.append(el("p", "note", "No " + mask + " left: add one to predict again."));
    }
  }

  // ---- Generate ---------------------------------------------------------------------------------

  const player = { frames: [], generated: new Set(), index: 0, timer: null };

  function templateHint() {
    const templated = $("gen-text").value.includes(maskToken());
    $("gen-length").disabled = templated;
    $("gen-hint").hidden = !templated;
  }

  async function runGenerate() {
    const text = $("gen-text").value.trim();
    const strategy = $("gen-strategy").value;
    const params = strategy ? { strategy: strategy } : {};
    const body = { parameters: params, return_steps: true };
    if (text.includes(maskToken())) params.template = text;
    else {
      if (text) body.prompt = text;
      numberParam(params, "length", $("gen-length"));
    }
    numberParam(params, "steps", $("gen-steps"));
    numberParam(params, "temperature", $("gen-temperature"));
    numberParam(params, "seed", $("gen-seed"));
    const started = performance.now();
    const data = await api("generate", body);
    renderGeneration(data, (performance.now() - started) / 1000);
  }

  function renderGeneration(data, wallSeconds) {
    stopPlayer();
    const mask = maskToken();
    player.frames = [{ tokens: data.canvas, committed: [], remasked: [] }].concat(data.trace);
    player.generated = new Set();
    data.canvas.forEach((t, i) => { if (t === mask) player.generated.add(i); });
    const canvas = $("gen-canvas");
    clear(canvas);
    for (let i = 0; i < data.canvas.length; i++) canvas.append(el("span", "tok"));
    $("gen-final").textContent = data.text;
    $("gen-calls").textContent = String(data.network_calls);
    $("gen-time").textContent = data.seconds.toFixed(3) + " s on the server, " + wallSeconds.toFixed(3) + " s here";
    $("gen-strategy-used").textContent = data.strategy + (data.steps == null ? "" : ", " + data.steps + " steps")
      + (data.why ? " (picked: " + data.why + ")" : "");
    const log = $("gen-log");
    clear(log);
    data.trace.forEach((step, k) => log.append(stepItem(step, k)));
    $("gen-scrub").max = String(data.trace.length);
    $("gen-out").hidden = false;
    showFrame(0);
    playFrom(0);
  }

  function stepItem(step, k) {
    const item = el("li");
    const button = el("button", "step", null);
    button.type = "button";
    button.append(el("span", "step-n", "step " + (k + 1)));
    const words = el("span", "step-words");
    for (const i of step.committed) words.append(el("span", "chip new", piece(step.tokens[i]).text));
    if (!step.committed.length) words.append(el("span", "muted", "nothing committed"));
    button.append(words);
    if (step.remasked.length) button.append(el("span", "chip remasked", "re-masked " + step.remasked.length));
    button.addEventListener("click", () => { stopPlayer(); showFrame(k + 1); });
    item.append(button);
    return item;
  }

  // A token as shown in a box: word pieces lose their ## (or Ġ/▁ word marks) and join the word before.
  function piece(token) {
    if (token.startsWith("##")) return { text: token.slice(2), joined: true };
    if (token.startsWith("\u0120") || token.startsWith("\u2581")) return { text: token.slice(1), joined: false };
    return { text: token, joined: false };
  }

  function showFrame(index) {
    const frame = player.frames[index];
    if (!frame) return;
    player.index = index;
    const mask = maskToken();
    const committed = new Set(frame.committed);
    const remasked = new Set(frame.remasked);
    const boxes = $("gen-canvas").children;
    frame.tokens.forEach((token, i) => {
      const box = boxes[i];
      const shown = piece(token);
      box.textContent = token === mask ? mask : shown.text;
      box.className = "tok";
      if (!player.generated.has(i)) box.classList.add("prompt");
      if (token === mask) box.classList.add("mask");
      if (committed.has(i)) box.classList.add("new");
      if (remasked.has(i)) box.classList.add("remasked");
      if (shown.joined && token !== mask) box.classList.add("joined");
    });
    const last = player.frames.length - 1;
    $("gen-scrub").value = String(index);
    $("gen-step-label").textContent = index === 0 ? "start of " + last + " steps" : "step " + index + " / " + last;
    const items = $("gen-log").children;
    for (let k = 0; k < items.length; k++) items[k].classList.toggle("current", k === index - 1);
  }

  function stopPlayer() {
    if (player.timer) clearInterval(player.timer);
    player.timer = null;
    $("gen-play").textContent = "Play";
  }

  function playFrom(index) {
    stopPlayer();
    const last = player.frames.length - 1;
    const delay = Math.min(700, Math.max(80, 6000 / Math.max(1, last)));
    showFrame(index);
    $("gen-play").textContent = "Pause";
    player.timer = setInterval(() => {
      if (player.index >= last) stopPlayer();
      else showFrame(player.index + 1);
    }, delay);
  }

  function setupPlayer() {
    $("gen-play").addEventListener("click", () => {
      if (player.timer) stopPlayer();
      else playFrom(player.index >= player.frames.length - 1 ? 0 : player.index);
    });
    $("gen-scrub").addEventListener("input", (event) => {
      stopPlayer();
      showFrame(Number(event.target.value));
    });
    $("gen-text").addEventListener("input", templateHint);
  }

  // ---- Score ------------------------------------------------------------------------------------

  async function runScore() {
    const a = $("score-a").value;
    const b = $("score-b").value;
    const inputs = b.trim() ? [a, b] : [a];
    const params = { per_token: true, reduction: $("score-reduction").value };
    if ($("score-metric").value) params.metric = $("score-metric").value;
    const data = await api("score", { inputs, parameters: params });
    renderScores(inputs, data, params);
  }

  function renderScores(inputs, results, params) {
    const out = $("score-out");
    clear(out);
    const metric = params.metric || (info ? info.default_score_metric : "the model's default");
    const unit = params.reduction === "mean" ? "nats per token" : "nats";
    results.forEach((r, s) => {
      const card = el("div", "card score-card");
      const head = el("div", "score-head");
      head.append(el("span", "score-label", results.length > 1 ? "ABCD"[s] : "Sentence"),
        el("span", "score-value", r.score.toFixed(3)), el("span", "muted", unit + " · " + metric));
      card.append(head, el("p", "sentence", inputs[s]));
      const tokens = el("div", "canvas shaded");
      for (const { token, logprob } of r.tokens || []) {
        const box = el("span", "tok scored");
        const unlikely = Math.min(1, -logprob / 12);
        box.style.backgroundColor = "rgba(220, 38, 38, " + (0.08 + 0.72 * unlikely).toFixed(3) + ")";
        if (unlikely > 0.55) box.classList.add("dark");
        box.title = token + ": log p = " + logprob.toFixed(3) + " (p = " + percent(Math.exp(logprob)) + ")";
        box.append(el("span", "tok-text", piece(token).text), el("span", "tok-lp", logprob.toFixed(2)));
        tokens.append(box);
      }
      card.append(tokens);
      out.append(card);
    });
    if (results.length === 2) out.prepend(verdict(results[0].score, results[1].score, unit));
  }

  function verdict(a, b, unit) {
    const diff = a - b;
    const box = el("p", "verdict");
    box.id = "score-verdict";
    if (Math.abs(diff) < 1e-9) box.textContent = "The model has no preference between A and B.";
    else {
      const winner = diff > 0 ? "A" : "B";
      const ratio = Math.exp(Math.abs(diff));
      box.textContent = "The model prefers " + winner + " by " + Math.abs(diff).toFixed(3) + " " + unit
        + (unit === "nats" ? " (" + (ratio < 1000 ? ratio.toFixed(2) : ratio.toExponential(2)) + " times as likely)." : ".");
    }
    return box;
  }

  // ---- start ------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    setupTabs();
    setupKey();
    setupPlayer();
    panel("fill", runFill);
    panel("generate", runGenerate);
    panel("score", runScore);
    panel("model", loadInfo);
    loadInfo();
  });
})();
