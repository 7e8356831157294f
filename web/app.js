// bootplane operator UI: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";

  // Filters apply as soon as they change.
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  // Destructive buttons ask first (also in rows a live list redrew).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.matches && form.matches("form[data-confirm]") &&
        !window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
  });

  // Copy buttons (shown only where this script runs): the clipboard API where the page is a
  // secure context (HTTPS, localhost), else a selection and the copy command (plain HTTP).
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = source.textContent.trim();
      function done(ok) {
        button.textContent = ok ? "Copied" : "Select and copy it by hand";
        setTimeout(function () { button.textContent = "Copy token"; }, 2500);
      }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(false); });
        return;
      }
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      done(ok);
    });
  });

  // Live lists refresh themselves: new machines appear, downloads progress and boot timelines
  // advance without a reload (every tbody[data-live] on the page, from its own URL).
  var live = document.getElementById("live");
  var summary = document.querySelector(".summary");
  document.querySelectorAll("tbody[data-live]").forEach(function (body) {
    var url = body.getAttribute("data-live");
    var last = body.innerHTML;
    function known() {
      var macs = {};
      body.querySelectorAll("tr[data-mac], tr[data-asset]").forEach(function (tr) { macs[tr.getAttribute("data-mac") || tr.getAttribute("data-asset")] = true; });
      return macs;
    }
    function refresh() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.redirected || response.status === 401) { window.location.reload(); return null; }
          if (!response.ok) { throw new Error(String(response.status)); }
          var text = response.headers.get("x-summary");
          if (text && summary) { summary.textContent = text; }
          return response.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          if (live) { live.classList.remove("stale"); live.textContent = "live"; }
          if (html === last) { return; }
          var before = known();
          body.innerHTML = html;
          last = html;
          body.querySelectorAll("tr[data-mac], tr[data-asset]").forEach(function (tr) {
            if (!before[tr.getAttribute("data-mac") || tr.getAttribute("data-asset")]) { tr.classList.add("fresh"); }
          });
        })
        .catch(function () {
          if (live) { live.classList.add("stale"); live.textContent = "reconnecting"; }
        });
    }
    setInterval(refresh, 2000);
  });
})();
