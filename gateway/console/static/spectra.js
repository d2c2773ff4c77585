// PAT Gateway console, spectra page: the newest spectra of one signal from /spectra/data, drawn
// with uPlot on their axis (newest dark, older ones fainter), the models' bands shaded.
// Refreshed every few seconds. No inline script: the Content-Security-Policy forbids it.
"use strict";

(function () {
  const box = document.getElementById("spectrum-chart");
  if (!box || typeof uPlot === "undefined") {
    return;
  }
  const note = document.getElementById("spectra-note");
  const axisUnit = document.getElementById("axis-unit");
  const REFRESH_MS = 3000;
  const BAND_FILL = { prediction: "rgba(31, 111, 178, 0.10)", reference: "rgba(214, 140, 0, 0.16)" };
  let chart = null;
  let shape = ""; // what the chart was built for: axis, unit and number of spectra
  let newest = null; // seq of the newest spectrum drawn

  function say(text) {
    if (note) {
      note.textContent = text;
    }
  }

  function showAxisUnit(axis) {
    if (!axisUnit) {
      return;
    }
    axisUnit.textContent = axis.label + " ";
    const code = document.createElement("code");
    code.textContent = axis.unit; // the UCUM code beside the unit as people write it
    axisUnit.appendChild(code);
  }

  function listBands(doc) {
    const table = document.querySelector("table.bands");
    if (!table) {
      return;
    }
    const body = table.querySelector("tbody");
    body.replaceChildren();
    for (const band of doc.bands) {
      const tr = document.createElement("tr");
      const range =
        Number(band.low.toPrecision(6)) + " … " + Number(band.high.toPrecision(6)) + " " + doc.axis.unit_human + " ";
      for (const text of [band.processor, band.model, band.use, range]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      const code = document.createElement("code");
      code.textContent = band.unit;
      tr.lastChild.appendChild(code);
      body.appendChild(tr);
    }
    document.getElementById("bands").hidden = doc.bands.length === 0;
  }

  function shadeBands(bands) {
    return function (u) {
      const ctx = u.ctx;
      const top = u.bbox.top;
      const height = u.bbox.height;
      ctx.save();
      for (const band of bands) {
        const left = u.valToPos(band.low, "x", true);
        const right = u.valToPos(band.high, "x", true);
        ctx.fillStyle = BAND_FILL[band.use] || "rgba(120, 120, 120, 0.12)";
        ctx.fillRect(Math.min(left, right), top, Math.abs(right - left), height);
      }
      ctx.restore();
    };
  }

  function build(doc) {
    const spectra = doc.spectra;
    const series = [{ label: doc.axis.label }];
    spectra.forEach((s, i) => {
      const alpha = Math.max(0.15, 0.6 - (0.45 * (i - 1)) / Math.max(1, spectra.length - 1));
      series.push({
        label: i === 0 ? "newest, seq " + s.seq : "seq " + s.seq,
        stroke: i === 0 ? "#1f4f8a" : "rgba(90, 110, 130, " + alpha.toFixed(2) + ")",
        width: i === 0 ? 2 : 1,
        points: { show: false },
      });
    });
    const valueUnit = doc.unit_human || doc.unit;
    const options = {
      width: Math.min(box.clientWidth || 1000, 1200),
      height: 420,
      scales: { x: { time: false } },
      axes: [
        { label: doc.axis.label },
        { label: "Intensity (" + valueUnit + ")", size: 70 },
      ],
      series: series,
      hooks: { drawClear: [shadeBands(doc.bands)] },
    };
    if (chart) {
      chart.destroy();
    }
    chart = new uPlot(options, data(doc), box);
  }

  function data(doc) {
    const columns = [doc.axis.values];
    for (const s of doc.spectra) {
      columns.push(s.values);
    }
    return columns;
  }

  function describe(doc) {
    const s = doc.spectra[0];
    const count = doc.spectra.length === 1 ? "1 spectrum" : doc.spectra.length + " spectra";
    let text = count + "; newest seq " + s.seq + " taken " + s.source_time;
    if (s.quality !== "good") {
      text += " (" + s.quality + (s.reason ? ": " + s.reason : "") + ")";
    }
    if (doc.skipped) {
      text += "; " + doc.skipped + " not drawn (no value, or on another axis)";
    }
    if (!doc.searched_all) {
      text += "; only the last " + doc.scan_rows + " stored samples are searched";
    }
    return text;
  }

  async function refresh() {
    let doc;
    try {
      const answer = await fetch(box.dataset.source, { headers: { Accept: "application/json" } });
      const type = answer.headers.get("Content-Type") || "";
      if (answer.status === 401) {
        window.location.reload(); // the session ended: the page itself asks for the login
        return;
      }
      if (!answer.ok || !type.startsWith("application/json")) {
        say("Could not read the spectra (" + answer.status + "): reload the page.");
        return;
      }
      doc = await answer.json();
    } catch (error) {
      say("Could not read the spectra: " + error);
      return;
    }
    if (!doc.axis || doc.spectra.length === 0) {
      const where = doc.searched_all ? "" : " in the last " + doc.scan_rows + " stored samples";
      say("No spectrum of " + doc.signal + " stored yet" + where + ".");
      return;
    }
    showAxisUnit(doc.axis);
    // Rebuilt only when something new came (a spectrum every few seconds at most): the legend
    // names each spectrum by its seq.
    const now = JSON.stringify([doc.axis.unit, doc.axis.values.length, doc.bands]);
    if (now !== shape || doc.spectra[0].seq !== newest || !chart) {
      shape = now;
      build(doc);
      listBands(doc);
    }
    newest = doc.spectra[0].seq;
    say(describe(doc));
  }

  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();
