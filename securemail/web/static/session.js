// Warn two minutes before the idle session ends (issue 20): the server ends it after
// [web] session_idle_minutes without a request; this page knows only when it was loaded.
"use strict";
(function () {
  var box = document.getElementById("session-warning");
  if (!box) { return; }
  var idle = parseInt(box.getAttribute("data-idle-seconds"), 10);
  if (!(idle > 150)) { return; }
  window.setTimeout(function () { box.hidden = false; }, (idle - 120) * 1000);
})();
