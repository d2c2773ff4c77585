// PAT Gateway console, models page: every processor output's value (± its sd), quality and age,
// and every alarm's state, refreshed from /models/data every two seconds (one small JSON read of
// what the gateway keeps in memory anyway). An alarm's Acknowledge form shows while the alarm
// waits for an acknowledgement. No inline script: the Content-Security-Policy forbids it.
"use strict";

(function () {
  const sections = document.querySelectorAll("section.processor");
  if (sections.length === 0) {
    return;
  }
  const REFRESH_MS = 2000;

  function shown(value) {
    if (value === null || value === undefined) {
      return "—";
    }
    return typeof value === "number" && !Number.isInteger(value)
      ? String(Number(value.toPrecision(6)))
      : String(value);
  }

  function showOutput(tr, data, sd) {
    const value = tr.querySelector(".value");
    const quality = tr.querySelector(".quality");
    const age = tr.querySelector(".age");
    if (!data) {
      return;
    }
    value.textContent = shown(data.value);
    const limit = parseFloat(tr.dataset.limit);
    value.classList.toggle("over", typeof data.value === "number" && data.value > limit);
    quality.textContent = data.reason ? data.quality + " (" + data.reason + ")" : data.quality;
    quality.className = "quality q-" + data.quality;
    age.textContent = data.age_s.toFixed(1);
    if (tr.dataset.sdSignal) {
      tr.querySelector(".sd").textContent = "± " + shown(sd ? sd.value : null);
    }
  }

  function showAlarm(tr, alarm) {
    const state = tr.querySelector(".state");
    state.textContent = alarm.state;
    state.className = "state alarm-" + alarm.state.split(",")[0];
    tr.querySelector(".severity").textContent = String(alarm.severity);
    tr.querySelector(".cause").textContent = alarm.reason || "";
    const form = tr.querySelector("form.ack");
    // Never hide a form someone is typing a reason into.
    if (form && !form.contains(document.activeElement)) {
      form.hidden = !alarm.pending;
    }
  }

  async function refresh() {
    let doc;
    try {
      const answer = await fetch("/models/data", { headers: { Accept: "application/json" } });
      const type = answer.headers.get("Content-Type") || "";
      if (!answer.ok || !type.startsWith("application/json")) {
        // The session ended (401), or an error: the page itself asks for the login, or says.
        window.location.reload();
        return;
      }
      doc = await answer.json();
    } catch (error) {
      return; // the gateway is restarting: try again at the next tick
    }
    for (const tr of document.querySelectorAll("tr[data-signal]")) {
      const sd = tr.dataset.sdSignal ? doc.signals[tr.dataset.sdSignal] : null;
      showOutput(tr, doc.signals[tr.dataset.signal], sd);
    }
    for (const tr of document.querySelectorAll("tr[data-alarm]")) {
      const alarm = doc.alarms[tr.dataset.alarm];
      if (alarm) {
        showAlarm(tr, alarm);
      }
    }
  }

  window.setInterval(refresh, REFRESH_MS);
})();
