// The rules pages' own script (console.js does the JSON forms; this does what they cannot):
// - <form data-import="/api/rules/import">: the chosen file's text (or the textarea's) sent as
//   the rule file, Content-Type application/toml; the answer in the form's <output>, every
//   refused rule and field listed; on success the page's parts are read again (gh:changed);
// - the dry run's answer (#dry-run's gh:done) shown as traces in #dry-run-result;
// - <select data-fill="#textarea">: a recorded event chosen goes into the event's textarea
//   (the empty choice puts the textarea's data-sample back);
// - the editor (#rule-editor): the part of the rule a refusal names (`then[0].set_level` is
//   the `then` field) is marked aria-invalid.
// Text from the server or the answer is only ever set as textContent, never as HTML.
(function () {
  "use strict";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function json(v) {
    try { return JSON.stringify(v); } catch (e) { return String(v); }
  }
  function show(form, cls, text) {
    var out = form.querySelector("output");
    if (!out) { out = el("output"); form.appendChild(out); }
    out.className = cls;
    out.setAttribute("role", cls === "bad" ? "alert" : "status");
    out.textContent = text;
  }
  function toLogin() {
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
  }

  // ---- import ----
  function ruleError(e) {
    return (e.rule ? "rule \"" + e.rule + "\": " : "") + e.field + ": " + e.reason;
  }
  function importFile(form) {
    var confirmText = form.getAttribute("data-confirm");
    var file = form.elements.file && form.elements.file.files && form.elements.file.files[0];
    var read = file ? file.text() : Promise.resolve(form.elements.text ? form.elements.text.value : "");
    var buttons = form.querySelectorAll("button");
    read.then(function (text) {
      if (!text.trim()) {
        show(form, "bad", "Choose a rule file or paste its text.");
        return null;
      }
      if (confirmText && !window.confirm(confirmText)) { return null; }
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
      show(form, "", "…");
      return fetch(form.getAttribute("data-import"), {
        method: "POST", credentials: "same-origin", body: text,
        headers: { "Content-Type": "application/toml", "Accept": "application/json" }
      }).then(function (r) {
        return r.text().then(function (t) {
          var body = null;
          try { body = t ? JSON.parse(t) : null; } catch (e) { body = null; }
          return { status: r.status, ok: r.ok, body: body, text: t };
        });
      });
    }).then(function (a) {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      if (!a) { return; }
      if (a.status === 401) { toLogin(); return; }
      if (!a.ok) {
        var lines = [];
        if (a.body && Array.isArray(a.body.errors) && a.body.errors.length) {
          lines.push("Refused, nothing was changed (" + a.body.errors.length + (a.body.errors.length === 1 ? " problem):" : " problems):"));
          a.body.errors.forEach(function (e) { lines.push(ruleError(e)); });
        } else {
          lines.push(a.body && a.body.error ? a.body.error : (a.text || ("HTTP " + a.status)));
        }
        if (a.status === 403) { lines[0] = "Your role may not do this: " + lines[0]; }
        show(form, "bad", lines.join("\n"));
        return;
      }
      var b = a.body || {};
      show(form, "ok", "Imported: " + b.rules + " rules, " + b.levels + " levels, " + b.variables + " variables (rule set " + b.hash + ").");
      var hash = document.getElementById("rules-hash");
      if (hash && b.hash) { hash.textContent = b.hash; }
      form.reset();
      document.body.dispatchEvent(new CustomEvent("gh:changed"));
    }).catch(function (e) {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      show(form, "bad", "The file could not be sent: " + e.message);
    });
  }
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-import")) { return; }
    ev.preventDefault();
    importFile(form);
  });

  // ---- the dry run's traces ----
  function outcome(t) {
    if (!t.matched) { return ["off", "did not match"]; }
    if (t.skipped) { return ["warn", "not run: " + t.skipped]; }
    for (var i = 0; i < t.actions.length; i++) {
      if (t.actions[i].result === "error") {
        var d = t.actions[i].detail;
        return ["bad", "action failed: " + (typeof d === "string" ? d : json(d))];
      }
    }
    return ["ok", "ok"];
  }
  function snapshot(s) {
    if (!s) { return ""; }
    var t = "level " + s.level + " · counter " + s.counter;
    Object.keys(s.vars || {}).forEach(function (k) { t += " · " + k + " = " + json(s.vars[k]); });
    return t;
  }
  function stepRow(key, test, value, passed) {
    var tr = el("tr");
    [key, test, value].forEach(function (v) {
      var td = el("td");
      td.appendChild(el("code", "", v));
      tr.appendChild(td);
    });
    var td = el("td");
    td.appendChild(el("span", "state " + (passed ? "ok" : "bad"), passed ? "held" : "failed"));
    tr.appendChild(td);
    return tr;
  }
  function traceElement(t, own) {
    var art = el("article", "panel trace" + (own ? " own" : ""));
    art.setAttribute("data-rule", t.rule);
    var head = el("header");
    var o = outcome(t);
    head.appendChild(el("span", "state " + o[0], o[1]));
    var a = el("a", "", t.rule);
    a.href = "/rules/" + encodeURIComponent(t.rule);
    head.appendChild(a);
    head.appendChild(el("span", "muted", "depth " + t.depth));
    art.appendChild(head);
    if (t.conditions.length || t.expr) {
      var table = el("table", "steps");
      var thead = el("thead"), hr = el("tr");
      ["Condition", "Test", "Value", ""].forEach(function (h) { hr.appendChild(el("th", "", h)); });
      thead.appendChild(hr);
      table.appendChild(thead);
      var tbody = el("tbody");
      t.conditions.forEach(function (c) { tbody.appendChild(stepRow(c.key, json(c.test), json(c.value), c.passed)); });
      if (t.expr) { tbody.appendChild(stepRow("expr", t.expr.source, json(t.expr.value), t.expr.passed)); }
      table.appendChild(tbody);
      art.appendChild(table);
    }
    if (t.actions.length) {
      var ol = el("ol", "actions-done");
      t.actions.forEach(function (x) {
        var li = el("li");
        li.appendChild(el("code", "", json(x.action)));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(el("span", "state " + (x.result === "ok" ? "ok" : x.result === "error" ? "bad" : "off"), x.result));
        if (x.detail !== undefined && x.detail !== null) {
          li.appendChild(document.createTextNode(" "));
          li.appendChild(el("span", "detail", typeof x.detail === "string" ? x.detail : json(x.detail)));
        }
        ol.appendChild(li);
      });
      art.appendChild(ol);
    }
    if (t.matched) { art.appendChild(el("p", "muted state-change", snapshot(t.before) + " → " + snapshot(t.after))); }
    return art;
  }
  function showDryRun(form, body) {
    var box = document.getElementById("dry-run-result");
    if (!box || !body) { return; }
    var own = form.getAttribute("data-rule");
    box.textContent = "";
    var traces = body.traces || [];
    var matched = traces.filter(function (t) { return t.matched; }).length;
    box.appendChild(el("h3", "", traces.length + (traces.length === 1 ? " rule" : " rules") + " evaluated, " + matched + " matched"));
    if (own && !traces.some(function (t) { return t.rule === own; })) {
      box.appendChild(el("p", "muted", "This rule was not evaluated: the event is not its trigger (or it is disabled)."));
    }
    // This rule's traces first, then the rest of the chain in order.
    traces.filter(function (t) { return t.rule === own; })
      .concat(traces.filter(function (t) { return t.rule !== own; }))
      .forEach(function (t) { box.appendChild(traceElement(t, t.rule === own)); });
    if (body.publishes && body.publishes.length) {
      box.appendChild(el("h3", "", "Would publish"));
      var ul = el("ul", "publishes");
      body.publishes.forEach(function (p) {
        var li = el("li");
        li.appendChild(el("code", "", p[0]));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(el("code", "muted", p[1]));
        ul.appendChild(li);
      });
      box.appendChild(ul);
    }
    if (body.events && body.events.length) {
      box.appendChild(el("p", "muted", "Would record: " + body.events.join(", ")));
    }
    if (body.state_after) {
      box.appendChild(el("p", "", "State after: " + snapshot(body.state_after)));
    }
    box.hidden = false;
  }
  document.addEventListener("gh:done", function (ev) {
    var form = ev.target;
    if (form instanceof HTMLFormElement && form.id === "dry-run") { showDryRun(form, ev.detail && ev.detail.body); }
  });

  // ---- a recorded event into the dry run's textarea ----
  document.addEventListener("change", function (ev) {
    var sel = ev.target;
    if (!(sel instanceof HTMLSelectElement) || !sel.hasAttribute("data-fill")) { return; }
    var target = document.querySelector(sel.getAttribute("data-fill"));
    if (!target) { return; }
    target.value = sel.value || target.getAttribute("data-sample") || "";
  });

  // ---- the editor: mark the part a refusal names ----
  function watchEditor() {
    var form = document.getElementById("rule-editor");
    var out = form && form.querySelector("output");
    if (!out || !window.MutationObserver) { return; }
    new MutationObserver(function () {
      if (out.className !== "bad") { return; }
      var m = /^(?:rule "[^"]*": )?([a-z_]+)(?:[.\[:]|$)/.exec(out.textContent);
      var field = m && form.elements[m[1]];
      if (field && field.setAttribute && !form.querySelector("[aria-invalid]")) {
        field.setAttribute("aria-invalid", "true");
      }
    }).observe(out, { childList: true, characterData: true, subtree: true, attributes: true });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watchEditor);
  } else {
    watchEditor();
  }
})();
