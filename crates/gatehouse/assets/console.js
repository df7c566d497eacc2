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
})();
