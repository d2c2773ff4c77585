// PAT Gateway console: trends of several signals from the store (GET /trends/data), one uPlot
// chart per signal, cursors in step. Live (the window before now, redrawn every 2 s) until the
// user drags across a chart to zoom in; "back to live" returns. No inline script anywhere.
"use strict";

(function () {
  const root = document.getElementById("trends");
  if (!root || typeof uPlot === "undefined") {
    return;
  }
  const windowS = parseInt(root.dataset.window, 10) || 900;
  const sections = Array.from(root.querySelectorAll("section.trend[data-signal]"));
  if (sections.length === 0) {
    return;
  }
  const REFRESH_MS = 2000;
  let zoom = null; // [start_s, end_s] while zoomed in, null when live
  let busy = false;
  const sync = uPlot.sync("trends");
  const charts = new Map();

  function width(section) {
    return Math.max(320, Math.min(section.clientWidth || 900, 1200));
  }

  function makeChart(section, unit) {
    const opts = {
      width: width(section),
      height: 220,
      cursor: { sync: { key: sync.key }, drag: { x: true, y: false } },
      scales: { x: { time: true } },
      axes: [{}, { label: unit, size: 70 }],
      series: [
        {},
        { label: "mean", stroke: "#1f6fb2", width: 2, spanGaps: false },
        { label: "min", stroke: "#9dbbd6", width: 1 },
        { label: "max", stroke: "#9dbbd6", width: 1 },
      ],
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width < 4) {
              return;
            }
            const from = u.posToVal(u.select.left, "x");
            const to = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, width: 0 }, false);
            zoom = [from, to];
            refresh();
          },
        ],
      },
    };
    return new uPlot(opts, [[], [], [], []], section.querySelector(".chart"));
  }

  function query() {
    const params = new URLSearchParams();
    for (const s of sections) {
      params.append("signal", s.dataset.signal);
    }
    params.set("points", String(Math.min(2000, Math.max(10, width(sections[0]) - 80))));
    if (zoom) {
      params.set("start", String(Math.floor(zoom[0] * 1000)));
      params.set("end", String(Math.ceil(zoom[1] * 1000)));
    } else {
      params.set("window", String(windowS));
    }
    return "/trends/data?" + params.toString();
  }

  function show(answer) {
    for (const section of sections) {
      const id = section.dataset.signal;
      const t = answer.signals[id];
      const status = section.querySelector(".trend-status");
      if (!t) {
        status.textContent = "no data";
        continue;
      }
      let chart = charts.get(id);
      if (!chart) {
        chart = makeChart(section, section.dataset.unit);
        charts.set(id, chart);
      }
      chart.setData([t.t, t.mean, t.lo, t.hi], false);
      chart.setScale("x", { min: answer.start_s, max: answer.end_s });
      const q = t.points_by_quality;
      let text =
        t.t.length +
        " points, " +
        Number(t.resolution_s.toPrecision(3)) +
        " s each (" +
        t.source +
        "); uncertain " +
        q.uncertain +
        ", bad " +
        q.bad +
        (zoom ? "; zoomed" : "; live");
      if (t.behind > 0) {
        text += "; " + t.behind + " newer samples still being rolled up";
      }
      status.textContent = text;
      section.dataset.points = String(t.t.length);
    }
  }

  function refresh() {
    if (busy) {
      return;
    }
    busy = true;
    fetch(query(), { credentials: "same-origin" })
      .then((response) => {
        if (response.status === 401 || response.redirected) {
          window.location.reload(); // the session ended: the page asks for the login again
          return null;
        }
        if (!response.ok) {
          return response.text().then((text) => {
            throw new Error(text);
          });
        }
        return response.json();
      })
      .then((answer) => {
        if (answer) {
          show(answer);
        }
      })
      .catch((error) => {
        for (const section of sections) {
          section.querySelector(".trend-status").textContent = String(error.message || error);
        }
      })
      .finally(() => {
        busy = false;
      });
  }

  const live = document.getElementById("trend-live");
  if (live) {
    live.addEventListener("click", () => {
      zoom = null;
      refresh();
    });
  }
  refresh();
  window.setInterval(() => {
    if (!zoom) {
      refresh();
    }
  }, REFRESH_MS);
})();
