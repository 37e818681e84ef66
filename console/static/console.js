// Progressive enhancement only: every page works without this script.
(function () {
  "use strict";
  // The overview reloads every data-refresh seconds while its tab is
  // visible (without JavaScript, a <noscript> meta refresh does it always).
  var secs = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (secs > 0) {
    var due = Date.now() + secs * 1000;
    setInterval(function () {
      if (document.visibilityState === "visible" && Date.now() >= due) {
        location.reload();
      }
    }, 1000);
  }
  // "Select all" on a page of dead letters.
  document.querySelectorAll("input.select-all").forEach(function (all) {
    all.hidden = false;
    all.addEventListener("change", function () {
      var form = all.closest("form");
      form.querySelectorAll("input[name=id]").forEach(function (b) { b.checked = all.checked; });
    });
  });
})();
