// A confirmation before a form goes: the button that submits it (or the form) names the
// question in data-confirm, and the form is sent only if the person says yes. The pages'
// Content-Security-Policy refuses onclick="return confirm(...)" (docs/security.md); htmx's own
// requests ask theirs through hx-confirm. Listening on the document covers forms that arrive
// later over a live socket (the freeze banner).
(function () {
  document.addEventListener("submit", function (event) {
    const question = (event.submitter && event.submitter.dataset.confirm) || event.target.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);
})();
