// The event log's live tail (/events): new rows are prepended by htmx (the rows' tbody
// listens for gh:event); this adds the newest seq shown as `after` to those requests, and
// the Pause/Resume toggle: while paused nothing is prepended and a count of what arrived
// shows (#events-missed); on resume the gap is filled by one request for everything after
// the newest row. No inline script (CSP), no eval.
(function () {
  "use strict";
  var paused = false;
  function rows() { return document.getElementById("event-rows"); }
  function newest() {
    var t = rows();
    if (!t) { return 0; }
    var first = t.querySelector("tr[data-seq]");
    var shown = first ? parseInt(first.getAttribute("data-seq"), 10) : 0;
    return Math.max(shown, parseInt(t.getAttribute("data-after") || "0", 10));
  }
  function ours(elt) { return elt && (elt.id === "event-rows" || elt.id === "events-missed"); }
  document.addEventListener("htmx:configRequest", function (ev) {
    if (ours(ev.detail.elt)) { ev.detail.parameters.after = String(newest()); }
  });
  document.addEventListener("htmx:beforeRequest", function (ev) {
    var elt = ev.detail.elt;
    if (!ours(elt)) { return; }
    // The rows while paused, the count while not: neither is wanted.
    if ((elt.id === "event-rows") === paused) { ev.preventDefault(); }
  });
  document.addEventListener("htmx:afterSwap", function (ev) {
    if (ev.detail.elt && ev.detail.elt.id === "event-rows") {
      var none = document.getElementById("events-none");
      if (none && rows().querySelector("tr[data-seq]")) { none.hidden = true; }
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("events-pause");
    var missed = document.getElementById("events-missed");
    if (!button || !missed) { return; }
    button.addEventListener("click", function () {
      paused = !paused;
      button.textContent = paused ? "Resume" : "Pause";
      button.setAttribute("aria-pressed", paused ? "true" : "false");
      document.body.classList.toggle("events-paused", paused);
      if (paused) {
        missed.textContent = "0 new";
        missed.hidden = false;
      } else {
        missed.hidden = true;
        rows().dispatchEvent(new CustomEvent("gh:event"));
      }
    });
  });
})();
