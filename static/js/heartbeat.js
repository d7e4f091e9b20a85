// The lease holder's heartbeat age on a run's page keeps counting between live updates: a
// worker that died sends no more beats, and so no more updates. The server renders the age
// and the interval; this adds the seconds since (the browser's clock never compared with the
// server's), and flags the beat as late as the server would.
(function () {
  function tick() {
    const now = performance.now();
    for (const beat of document.querySelectorAll("[data-heartbeat-age]")) {
      if (!beat.dataset.shownAt) beat.dataset.shownAt = now;
      const age = Math.floor(Number(beat.dataset.heartbeatAge) + (now - Number(beat.dataset.shownAt)) / 1000);
      const late = age > Number(beat.dataset.interval);
      beat.classList.toggle("late", late);
      beat.querySelector(".age").textContent = age;
      beat.querySelector(".late-note").hidden = !late;
    }
  }
  setInterval(tick, 1000);
})();
