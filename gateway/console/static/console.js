// PAT Gateway console: live signal values from /events (Server-Sent Events) and a live chart
// of one signal (uPlot). No inline script anywhere: the page's Content-Security-Policy forbids it.
"use strict";

(function () {
  const table = document.getElementById("signals");
  if (!table) {
    return;
  }
  const rows = new Map();
  for (const tr of table.querySelectorAll("tbody tr[data-signal]")) {
    rows.set(tr.dataset.signal, {
      tr: tr,
      value: tr.querySelector(".value"),
      quality: tr.querySelector(".quality"),
      age: tr.querySelector(".age"),
      seq: tr.querySelector(".seq"),
      ageS: parseFloat(tr.querySelector(".age").textContent),
      at: Date.now(),
    });
  }

  // The live chart: the values of one signal (the row last clicked) since it was chosen.
  const POINTS = 2400; // ten minutes at four updates a second
  let chart = null;
  let chosen = null;
  let xs = [];
  let ys = [];
  const box = document.getElementById("chart");

  function choose(id) {
    chosen = id;
    xs = [];
    ys = [];
    if (!box || typeof uPlot === "undefined") {
      return;
    }
    box.hidden = false;
    if (chart) {
      chart.destroy();
    }
    chart = new uPlot(
      {
        title: id,
        width: Math.min(box.clientWidth || 800, 1000),
        height: 260,
        series: [{}, { label: id, stroke: "#1f6fb2", width: 2 }],
      },
      [xs, ys],
      box,
    );
  }

  for (const [id, row] of rows) {
    row.tr.addEventListener("click", () => choose(id));
  }

  function shown(value) {
    if (value === null) {
      return "—";
    }
    // Floats to 6 significant digits, as the page was rendered on the server.
    return typeof value === "number" && !Number.isInteger(value)
      ? String(Number(value.toPrecision(6)))
      : String(value);
  }

  function show(data) {
    const row = rows.get(data.id);
    if (!row) {
      return;
    }
    row.value.textContent = shown(data.value);
    row.quality.textContent = data.reason ? data.quality + " (" + data.reason + ")" : data.quality;
    row.quality.className = "quality q-" + data.quality;
    row.seq.textContent = String(data.seq);
    row.ageS = data.age_s;
    row.at = Date.now();
    row.age.textContent = data.age_s.toFixed(1);
    if (chart && data.id === chosen && typeof data.value === "number") {
      xs.push(Date.now() / 1000);
      ys.push(data.value);
      if (xs.length > POINTS) {
        xs.shift();
        ys.shift();
      }
      chart.setData([xs, ys]);
    }
  }

  const source = new EventSource(table.dataset.events);
  source.addEventListener("signal", (event) => show(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (the session ended): the page itself asks for the login again.
      window.setTimeout(() => window.location.reload(), 3000);
    }
  });

  window.setInterval(() => {
    const now = Date.now();
    for (const row of rows.values()) {
      if (!Number.isNaN(row.ageS)) {
        row.age.textContent = (row.ageS + (now - row.at) / 1000).toFixed(1);
      }
    }
  }, 1000);
})();
