// Flotilla web console: live updates without reloading the page. Every few seconds it fetches
// the page it is on again and swaps the part marked #live; the filter form and the scroll
// position stay. Without JavaScript the pages are the same, only not live.
(function () {
  "use strict";
  var EVERY_MS = 3000;
  var busy = false;
  function stamp(text) {
    var el = document.getElementById("updated");
    if (el) el.textContent = text;
  }
  function refresh() {
    if (busy || document.visibilityState === "hidden") return;
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var live = document.getElementById("live");
        if (next && live) live.replaceChildren.apply(live, Array.prototype.slice.call(next.childNodes));
        stamp("updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) { stamp("not updating: " + e.message); })
      .then(function () { busy = false; });
  }
  stamp("live");
  setInterval(refresh, EVERY_MS);
})();
