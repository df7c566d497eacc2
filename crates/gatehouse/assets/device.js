// The SKABEN prop page's config editor (templates/device.html).
// The textarea holds the whole config as JSON. console.js sends a form's named fields as one
// JSON object, so this keeps one hidden field per top-level key of the text
// (data-type="json"): the body console.js sends is then exactly the config. It checks what a
// browser can (JSON, an object, no protocol keys, the simple parts of the type's JSON Schema)
// and leaves the rest to the API, whose 400 console.js shows in the form's <output>.
// A 409 opens the dialog that says who changed the config and when: reload or overwrite.
(function () {
  "use strict";
  var META = ["task_id", "hash", "FORCE"];
  // Keys a form control cannot be named: a control named like a form's method or `elements`
  // would hide it from console.js (forms expose their controls by name).
  var probe = document.createElement("form");
  function unusable(k) {
    return k === "" || k === "elements" || k === "length" || typeof probe[k] === "function";
  }
  function kindOf(v) {
    if (v === null) { return "null"; }
    if (Array.isArray(v)) { return "array"; }
    if (typeof v === "number") { return Number.isInteger(v) ? "integer" : "number"; }
    return typeof v;
  }
  function kindOk(v, t) {
    if (Array.isArray(t)) { return t.some(function (x) { return kindOk(v, x); }); }
    var k = kindOf(v);
    return t === k || (t === "number" && k === "integer");
  }
  // The top level of a JSON Schema: type, required, properties' type/enum/const,
  // additionalProperties false. Anything else is the server's to check.
  function schemaProblems(schema, v) {
    var out = [];
    if (!schema || typeof schema !== "object") { return out; }
    if (schema.type && !kindOk(v, schema.type)) {
      out.push("the type's schema wants " + JSON.stringify(schema.type) + ", not " + kindOf(v));
      return out;
    }
    if (kindOf(v) !== "object") { return out; }
    (Array.isArray(schema.required) ? schema.required : []).forEach(function (k) {
      if (!Object.prototype.hasOwnProperty.call(v, k)) { out.push("the type's schema requires the key \"" + k + "\""); }
    });
    var props = schema.properties && typeof schema.properties === "object" ? schema.properties : {};
    Object.keys(v).forEach(function (k) {
      var p = props[k];
      if (p && typeof p === "object") {
        if (p.type && !kindOk(v[k], p.type)) {
          out.push("\"" + k + "\": the type's schema wants " + JSON.stringify(p.type) + ", not " + kindOf(v[k]));
        }
        if (Array.isArray(p["enum"]) && !p["enum"].some(function (e) { return JSON.stringify(e) === JSON.stringify(v[k]); })) {
          out.push("\"" + k + "\": the type's schema allows only " + p["enum"].map(function (e) { return JSON.stringify(e); }).join(", "));
        }
        if (Object.prototype.hasOwnProperty.call(p, "const") && JSON.stringify(p["const"]) !== JSON.stringify(v[k])) {
          out.push("\"" + k + "\": the type's schema wants " + JSON.stringify(p["const"]));
        }
      } else if (schema.additionalProperties === false && !schema.patternProperties) {
        out.push("\"" + k + "\": the type's schema allows no such key");
      }
    });
    return out.slice(0, 3);
  }
  // What is wrong with the editor's text, or null; and the config it holds.
  function check(text, smart, schema) {
    var v;
    try { v = JSON.parse(text); } catch (e) { return { error: "Not valid JSON: " + e.message }; }
    if (kindOf(v) !== "object") {
      return { error: smart ? "A smart device's config must be a JSON object." : "This editor saves a JSON object; send other configs with the API." };
    }
    var keys = Object.keys(v);
    if (keys.length === 0) {
      return { error: "An empty config cannot be sent from this page; use PUT on the API." };
    }
    for (var i = 0; i < keys.length; i++) {
      if (META.indexOf(keys[i]) >= 0) {
        return { error: "\"" + keys[i] + "\" is reserved for the protocol (task_id, hash, FORCE) and can't be a config key." };
      }
      if (unusable(keys[i])) {
        return { error: "The key \"" + keys[i] + "\" cannot be saved from this page; use PUT on the API." };
      }
    }
    var problems = schemaProblems(schema, v);
    if (problems.length) { return { error: "Does not match the type's schema: " + problems.join("; ") + "." }; }
    return { error: null, value: v };
  }

  function init() {
    var form = document.getElementById("config-form");
    if (!form) { return; }
    var text = document.getElementById("config-text");
    var fields = document.getElementById("config-fields");
    var problem = document.getElementById("config-problem");
    var stale = document.getElementById("config-stale");
    var versionLabel = document.getElementById("config-version");
    var dialog = document.getElementById("config-conflict");
    var out = form.querySelector("output");
    var smart = form.getAttribute("data-type-kind") === "smart";
    var schema = null;
    try { schema = form.getAttribute("data-schema") ? JSON.parse(form.getAttribute("data-schema")) : null; } catch (e) { schema = null; }

    // The hidden fields follow the text; invalid text leaves none (nothing to send).
    function sync() {
      var r = check(text.value, smart, schema);
      while (fields.firstChild) { fields.removeChild(fields.firstChild); }
      text.setCustomValidity(r.error || "");
      problem.textContent = r.error || "";
      problem.hidden = !r.error;
      if (r.error) { text.setAttribute("aria-invalid", "true"); return false; }
      text.removeAttribute("aria-invalid");
      Object.keys(r.value).forEach(function (k) {
        var input = document.createElement("input");
        input.type = "hidden";
        input.name = k;
        input.setAttribute("data-type", "json");
        input.value = JSON.stringify(r.value[k]);
        fields.appendChild(input);
      });
      return true;
    }
    function setVersion(v) {
      form.setAttribute("data-if-match", String(v));
      if (versionLabel) { versionLabel.textContent = String(v); }
      noteStale();
    }
    // The live part shows the desired version; say so when it is not the one being edited.
    function noteStale() {
      var d = document.getElementById("desired-version");
      if (!d || !stale) { return; }
      var now = d.getAttribute("data-version"), mine = form.getAttribute("data-if-match");
      if (now && mine && now !== mine) {
        stale.textContent = "The config is now version " + now + " (by " + d.getAttribute("data-by") +
          "); this editor holds version " + mine + ". Saving will ask you to reload or overwrite.";
        stale.hidden = false;
      } else {
        stale.hidden = true;
      }
    }

    text.addEventListener("input", sync);
    // Before console.js sends the form (its listener is on the document, bubbling).
    document.addEventListener("submit", function (ev) {
      if (ev.target === form && !sync()) {
        ev.preventDefault();
        ev.stopImmediatePropagation();
        text.focus();
      }
    }, true);
    // The API's refusals (console.js marks only a control named like the error's field).
    if (out && window.MutationObserver) {
      new MutationObserver(function () {
        if (out.classList.contains("bad")) { text.setAttribute("aria-invalid", "true"); }
        else if (out.classList.contains("ok")) { text.removeAttribute("aria-invalid"); }
      }).observe(out, { attributes: true, attributeFilter: ["class"] });
    }
    form.addEventListener("gh:done", function () {
      setVersion(form.getAttribute("data-if-match"));
    });
    document.body.addEventListener("htmx:afterSwap", noteStale);

    // 409: who changed it and when.
    function human(rfc) {
      return String(rfc || "").replace("T", " ").replace(/(\.\d+)?Z$/, " UTC");
    }
    form.addEventListener("gh:conflict", function (ev) {
      var b = (ev.detail && ev.detail.body) || {};
      document.getElementById("conflict-version").textContent = b.version !== undefined ? String(b.version) : "?";
      document.getElementById("conflict-who").textContent = b.changed_by || "someone";
      var when = document.getElementById("conflict-when");
      when.setAttribute("datetime", b.changed_at || "");
      when.textContent = human(b.changed_at) || "an unknown time";
      document.getElementById("conflict-out").textContent = "";
      if (dialog && !dialog.open) { dialog.showModal(); }
    });
    document.getElementById("conflict-cancel").addEventListener("click", function () { dialog.close(); });
    document.getElementById("conflict-overwrite").addEventListener("click", function () {
      dialog.close();
      window.gatehouseOverwrite(form);
    });
    // Reload: the current config into the editor, keeping nothing of the edit.
    document.getElementById("conflict-reload").addEventListener("click", function () {
      var msg = document.getElementById("conflict-out");
      msg.className = "";
      msg.textContent = "…";
      fetch("/api/devices/" + form.getAttribute("data-device-key"), {
        headers: { "Accept": "application/json" }, credentials: "same-origin"
      }).then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      }).then(function (page) {
        text.value = JSON.stringify(page.desired.config, null, 2);
        setVersion(page.desired.version);
        sync();
        if (out) { out.className = "ok"; out.textContent = "Reloaded version " + page.desired.version + "."; }
        dialog.close();
      }).catch(function (e) {
        msg.className = "bad";
        msg.textContent = "Could not read the config: " + e.message;
      });
    });
    sync();
    noteStale();
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
