// The console's own script: the theme (dark by default, light on request, kept per browser)
// and small behaviours htmx does not give. No inline scripts anywhere (CSP default-src 'self').
(function () {
  "use strict";
  var saved = null;
  try { saved = localStorage.getItem("gatehouse-theme"); } catch (e) { /* private mode */ }
  if (saved === "light" || saved === "dark") {
    document.documentElement.setAttribute("data-theme", saved);
  }
  function toggleTheme() {
    var next = document.documentElement.getAttribute("data-theme") === "light" ? "dark" : "light";
    document.documentElement.setAttribute("data-theme", next);
    try { localStorage.setItem("gatehouse-theme", next); } catch (e) { /* private mode */ }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var t = document.getElementById("theme-toggle");
    if (t) { t.addEventListener("click", toggleTheme); }
  });
  // The live stream says the session has ended: go to the login page, not a 401 loop.
  document.addEventListener("htmx:sseMessage", function (ev) {
    if (ev.detail && ev.detail.type === "logout") {
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
    }
  });

  // Forms that call the API: every action a page offers is an /api call, made here.
  //   <form data-api="/api/devices/acon/1953/cells/3" data-method="PUT"
  //         data-confirm="Engage cell 3?" data-if-match="4" data-then="changed">
  // Each named field goes into a JSON body: data-type="int" a number, "bool" (a checkbox)
  // true or false, "json" the parsed text, "lines" a list of the non-empty lines; an empty
  // field marked data-optional is left out. GET and DELETE send no body.
  // The answer is shown in the form's <output> (class "ok" or "bad", with the API's error
  // and the field it names); the field named is marked aria-invalid. On success:
  // - the body gets a "gh:changed" event (live fragments listen: hx-trigger="gh:changed from:body"),
  //   or the page is loaded again with data-then="reload", or goes to data-then="go:/path";
  // - data-result="#sel" data-result-field="token" puts that field of the answer into #sel;
  // - the form gets "gh:done" with {status, body, etag}, and its data-if-match the new ETag.
  // A 409 raises "gh:conflict" on the form with {status, body} (the page offers reload or
  // overwrite); a 401 goes to the login page.
  function fieldValue(el) {
    var t = el.getAttribute("data-type") || "";
    if (t === "bool") { return el.checked; }
    var v = el.value;
    if (v === "" && el.hasAttribute("data-optional")) { return undefined; }
    if (t === "int") {
      if (!/^-?[0-9]+$/.test(v.trim())) { throw { field: el.name, error: el.name + ": a whole number" }; }
      return parseInt(v, 10);
    }
    if (t === "json") {
      try { return JSON.parse(v); } catch (e) { throw { field: el.name, error: el.name + ": not valid JSON (" + e.message + ")" }; }
    }
    if (t === "lines") {
      return v.split("\n").map(function (l) { return l.trim(); }).filter(function (l) { return l !== ""; });
    }
    return v;
  }
  function formBody(form) {
    var body = {}, n = 0;
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") { return; }
      if (el.type === "radio" && !el.checked) { return; }
      var v = fieldValue(el);
      if (v !== undefined) { body[el.name] = v; n++; }
    });
    return n ? body : null;
  }
  function show(form, cls, text, field) {
    var out = form.querySelector("output");
    if (!out) {
      out = document.createElement("output");
      form.appendChild(out);
    }
    out.className = cls;
    out.setAttribute("role", cls === "bad" ? "alert" : "status");
    out.textContent = text;
    Array.prototype.forEach.call(form.querySelectorAll("[aria-invalid]"), function (el) {
      el.removeAttribute("aria-invalid");
    });
    if (field && form.elements[field] && form.elements[field].setAttribute) {
      form.elements[field].setAttribute("aria-invalid", "true");
    }
  }
  function apiSubmit(form, overwrite) {
    var method = (form.getAttribute("data-method") || "POST").toUpperCase();
    var confirmText = form.getAttribute("data-confirm");
    if (confirmText && !overwrite && !window.confirm(confirmText)) { return; }
    var body;
    try { body = method === "GET" || method === "DELETE" ? null : formBody(form); }
    catch (bad) { show(form, "bad", bad.error, bad.field); return; }
    var headers = { "Accept": "application/json" };
    if (body !== null) { headers["Content-Type"] = "application/json"; }
    var version = form.getAttribute("data-if-match");
    if (version && !overwrite) { headers["If-Match"] = '"' + version + '"'; }
    var buttons = form.querySelectorAll("button");
    Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
    show(form, "", "…");
    fetch(form.getAttribute("data-api"), {
      method: method, headers: headers, credentials: "same-origin",
      body: body === null ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.text().then(function (text) {
        var parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
        return { status: r.status, ok: r.ok, body: parsed, text: text, etag: r.headers.get("ETag") };
      });
    }).then(function (a) {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      if (a.status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
        return;
      }
      if (!a.ok) {
        var msg = a.body && a.body.error ? a.body.error : (a.text || ("HTTP " + a.status));
        if (a.status === 403) { msg = "Your role may not do this: " + msg; }
        show(form, "bad", msg, a.body && a.body.field);
        if (a.status === 409) {
          form.dispatchEvent(new CustomEvent("gh:conflict", { bubbles: true, detail: a }));
        }
        return;
      }
      show(form, "ok", form.getAttribute("data-ok") || "Done.");
      if (a.etag) { form.setAttribute("data-if-match", a.etag.replace(/^W\//, "").replace(/"/g, "")); }
      var sel = form.getAttribute("data-result");
      if (sel && a.body) {
        var target = document.querySelector(sel), f = form.getAttribute("data-result-field");
        if (target) {
          target.textContent = f ? String(a.body[f]) : JSON.stringify(a.body, null, 2);
          target.hidden = false;
        }
      }
      if (form.hasAttribute("data-reset")) { form.reset(); }
      form.dispatchEvent(new CustomEvent("gh:done", { bubbles: true, detail: a }));
      var then = form.getAttribute("data-then") || "changed";
      if (then === "reload") { window.location.reload(); }
      else if (then.indexOf("go:/") === 0) { window.location.assign(then.slice(3)); }
      else { document.body.dispatchEvent(new CustomEvent("gh:changed")); }
    }).catch(function (e) {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      show(form, "bad", "The server did not answer: " + e.message);
    });
  }
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-api")) { return; }
    ev.preventDefault();
    apiSubmit(form, false);
  });
  // Sends a form again without its If-Match (the "overwrite" of a 409 dialog).
  window.gatehouseOverwrite = function (form) { apiSubmit(form, true); };

  // Countdowns: <span data-until="<epoch ms>">; the text is the time left, "0:00" once past.
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function tick() {
    var now = Date.now();
    Array.prototype.forEach.call(document.querySelectorAll("[data-until]"), function (el) {
      var left = Math.max(0, Math.round((parseInt(el.getAttribute("data-until"), 10) - now) / 1000));
      var h = Math.floor(left / 3600), m = Math.floor(left / 60) % 60, s = left % 60;
      el.textContent = (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s);
      el.classList.toggle("past", left === 0);
    });
  }
  setInterval(tick, 1000);

  // What the live stream says, for the parts of a page about one device or some kinds of
  // event (htmx's own sse: triggers cannot filter: allowEval is off):
  // - <div data-device="acon/1953" hx-trigger="gh:device"> gets "gh:device" when a `device`
  //   message is about that device, or an `event` message names it;
  // - <div data-kinds="level_changed counter_changed" hx-trigger="gh:event"> gets "gh:event"
  //   when an `event` message is of one of those kinds ("*": any).
  // At most one of each per element every 250 ms, so a burst is one refresh.
  var pending = new WeakMap();
  function poke(el, name) {
    var p = pending.get(el) || {};
    if (p[name]) { return; }
    p[name] = setTimeout(function () {
      p[name] = null;
      el.dispatchEvent(new CustomEvent(name));
    }, 250);
    pending.set(el, p);
  }
  function forDevice(key) {
    Array.prototype.forEach.call(document.querySelectorAll("[data-device]"), function (el) {
      if (el.getAttribute("data-device") === key) { poke(el, "gh:device"); }
    });
  }
  function onDevice(m) {
    try { var d = JSON.parse(m.data); forDevice(d.kind + "/" + d.id); } catch (e) { /* not ours */ }
  }
  function onEvent(m) {
    var d;
    try { d = JSON.parse(m.data); } catch (e) { return; }
    if (d.device) { forDevice(d.device); }
    Array.prototype.forEach.call(document.querySelectorAll("[data-kinds]"), function (el) {
      var kinds = el.getAttribute("data-kinds").split(/\s+/);
      if (kinds.indexOf("*") >= 0 || kinds.indexOf(d.kind) >= 0) { poke(el, "gh:event"); }
    });
  }
  var streamOpened = false;
  document.addEventListener("htmx:sseOpen", function (ev) {
    var source = ev.detail && ev.detail.source;
    if (!source) { return; }
    // Open again after a break (the server restarted, the network dropped): what happened
    // meanwhile was not streamed, so every live part loads itself again.
    if (streamOpened) { document.body.dispatchEvent(new CustomEvent("gh:changed")); }
    streamOpened = true;
    source.addEventListener("device", onDevice);
    source.addEventListener("event", onEvent);
    // A resync: what the page shows may have missed events; load it again.
    source.addEventListener("resync", function () { document.body.dispatchEvent(new CustomEvent("gh:changed")); });
  });
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSwap", tick);
})();
