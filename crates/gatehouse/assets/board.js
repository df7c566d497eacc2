// The ACon board's page (templates/board.html): the panel of a tapped cell, which htmx loads
// into #cell-panel, opens as a modal dialog (a bottom sheet on a phone); closing it (✕,
// Escape, a tap outside) empties it, so its live part stops refreshing. No inline scripts
// anywhere (CSP default-src 'self').
(function () {
  "use strict";
  document.addEventListener("htmx:afterSwap", function (ev) {
    var panel = document.getElementById("cell-panel");
    var dialog = document.getElementById("cell-dialog");
    if (!panel || !dialog || ev.detail.target !== panel) { return; }
    if (!dialog.open) { dialog.showModal(); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var dialog = document.getElementById("cell-dialog");
    if (!dialog) { return; }
    dialog.addEventListener("close", function () {
      var panel = document.getElementById("cell-panel");
      if (panel) { panel.innerHTML = ""; }
    });
    // The dialog's own box is only its edge and backdrop: its content fills it.
    dialog.addEventListener("click", function (ev) {
      if (ev.target === dialog) { dialog.close(); }
    });
  });
})();
