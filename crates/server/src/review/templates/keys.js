// The review desk's keyboard. Served from /review/static (the CSP allows no inline script
// and no event-handler attribute); every page works without it.
//   queue:   j/k next/previous row, Enter open, x tick the row, / search
//   message: j/k next/previous message, a approve (to the confirmation), r reject (the
//            reason), e edit (the first payload field), u undo, / search
//   anywhere: Escape leaves a field
"use strict";
(() => {
  const typing = (el) =>
    el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
  const rows = [...document.querySelectorAll("tr[data-href]")];
  let at = -1;
  const select = (i) => {
    if (!rows.length) return;
    if (at >= 0) rows[at].classList.remove("selected");
    at = Math.max(0, Math.min(rows.length - 1, i));
    rows[at].classList.add("selected");
    rows[at].querySelector("a.open")?.focus();
  };
  const search = document.getElementById("search");
  // The page's [autofocus] element is focused here, before the load event: a browser applies
  // autofocus at its next rendering step, which on a busy machine comes after the page has
  // loaded, and a key pressed in between (Enter on a confirmation) would go nowhere.
  const autofocus = document.querySelector("[autofocus]");
  if (search && location.hash === "#search") search.focus();
  else if (autofocus) autofocus.focus();
  else if (rows.length) select(0);
  const click = (id) => document.getElementById(id)?.click();
  const follow = (rel) => {
    const link = document.querySelector(`a[rel=${rel}]`);
    if (link) location.href = link.href;
  };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const handled = {
      j: () => (rows.length ? select(at + 1) : follow("next")),
      k: () => (rows.length ? select(at - 1) : follow("prev")),
      x: () => {
        const box = rows[at]?.querySelector("input[type=checkbox]");
        if (box) box.checked = !box.checked;
      },
      a: () => click("approve"),
      r: () => document.getElementById("reject-reason")?.focus(),
      e: () => document.querySelector("#actions form.fields :is(input:not([type=hidden]), textarea, select)")?.focus(),
      u: () => click("undo"),
      "/": () => (search ? search.focus() : (location.href = "/review#search")),
    }[event.key];
    if (handled) {
      event.preventDefault();
      handled();
    }
  });
})();
