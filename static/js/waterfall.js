// The run page's waterfall (templates/runs/_waterfall.html) places its bars, notes and ticks
// along the time axis. The pages' Content-Security-Policy refuses style="..." attributes, so
// the server writes each place as data-place="left:12.5;width:3" (percentages of the track),
// and this sets them through the element's style object, which the policy allows. It places
// the marks there at load and those a live update swaps in later.
(function () {
  const SIDES = new Set(["left", "right", "width"]);

  function place(root) {
    const marks = root.querySelectorAll ? root.querySelectorAll("[data-place]") : [];
    for (const mark of [...(root.matches && root.matches("[data-place]") ? [root] : []), ...marks]) {
      for (const pair of mark.dataset.place.split(";")) {
        const [side, value] = pair.split(":");
        const number = Number(value);
        if (SIDES.has(side) && value !== "" && Number.isFinite(number)) mark.style[side] = number + "%";
      }
    }
  }

  new MutationObserver(function (changes) {
    for (const change of changes) for (const node of change.addedNodes) place(node);
  }).observe(document.documentElement, { childList: true, subtree: true });
  document.addEventListener("DOMContentLoaded", function () { place(document); });
})();
