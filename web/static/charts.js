// The workbench's charts (plotly.min.js, served from the installed plotly package).
// The data travel in <script type="application/json"> blocks: no inline script (CSP).
(function () {
  "use strict";
  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  var config = { displaylogo: false, responsive: true };
  var layout = { margin: { t: 40, r: 60, b: 140, l: 60 }, legend: { orientation: "h", x: 0, y: 1.12 } };
  document.addEventListener("DOMContentLoaded", function () {
    if (typeof Plotly === "undefined") { return; }
    var ev = data("event-chart-data");
    if (ev && document.getElementById("event-chart")) {
      var x = ev.protocols.map(function (p, i) { return (i + 1) + ". " + p; });
      Plotly.newPlot("event-chart", [
        { type: "bar", name: "CTDIvol (mGy)", x: x, y: ev.ctdivol, yaxis: "y" },
        { type: "scatter", mode: "markers+lines", name: "DLP (mGy·cm)", x: x, y: ev.dlp, yaxis: "y2" }
      ], Object.assign({}, layout, {
        yaxis: { title: { text: "CTDIvol mGy" } },
        yaxis2: { title: { text: "DLP mGy·cm" }, overlaying: "y", side: "right" }
      }), config);
    }
    var s = data("summary-data");
    if (s && document.getElementById("scanner-chart")) {
      var names = s.scanners.map(function (r) { return r.scanner; });
      Plotly.newPlot("scanner-chart", [
        { type: "bar", name: "complete", x: names, y: s.scanners.map(function (r) { return r.complete; }) },
        { type: "bar", name: "incomplete", x: names, y: s.scanners.map(function (r) { return r.studies - r.complete; }) }
      ], Object.assign({}, layout, {
        barmode: "stack", yaxis: { title: { text: "studies" } },
        xaxis: { automargin: true, tickangle: -30 }  // long scanner labels: slanted to the left, never cut
      }), config);
      var traces = Object.keys(s.dlp_by_protocol).map(function (p) {
        return { type: "box", name: p, y: s.dlp_by_protocol[p], boxpoints: "outliers" };
      });
      Plotly.newPlot("dlp-chart", traces, Object.assign({}, layout, {
        showlegend: false, yaxis: { title: { text: "total DLP mGy·cm" } }, xaxis: { automargin: true, tickangle: -30 }
      }), config);
    }
  });
})();
