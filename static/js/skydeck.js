// SkyDeck's few behaviours beyond htmx: bulk selection, the flag editor, log following.
(function () {
  "use strict";

  // Polls skip a beat while the tab is hidden or a row menu is open.
  window.skydeckCanPoll = function () {
    return !document.hidden && !document.querySelector("details.menu[open]");
  };
  // Text boxes filter as the user types; their change-on-blur must not refetch (and reset) the table.
  window.skydeckIsChoice = function (target) {
    return !!(target && target.matches && target.matches("select, input[type=checkbox]"));
  };
  window.skydeckFlagControl = function (target) {
    return !!(target && target.matches && target.matches(".flag-key-input, .flag-type-input"));
  };

  // --- bulk selection -------------------------------------------------------
  const BOX = '#experiment-table input[name="selected"]';
  function rowBoxes() { return Array.from(document.querySelectorAll(BOX)); }

  function updateSelection() {
    const boxes = rowBoxes();
    const checked = boxes.filter(function (b) { return b.checked; }).length;
    boxes.forEach(function (b) { const tr = b.closest("tr"); if (tr) tr.classList.toggle("is-selected", b.checked); });
    const table = document.getElementById("experiment-table");
    const matching = table ? table.dataset.count : "0";
    const matchCount = document.getElementById("match-count");
    if (matchCount) matchCount.textContent = matching;
    const all = document.getElementById("all-matching");
    const label = document.getElementById("selection-count");
    if (label) {
      label.textContent = all && all.checked ? "All " + matching + " matching selected"
        : checked ? checked + " selected" : "None selected";
    }
    const page = document.getElementById("select-page");
    if (page) {
      page.checked = checked > 0 && checked === boxes.length;
      page.indeterminate = checked > 0 && checked < boxes.length;
    }
  }

  let lastBox = null;
  document.addEventListener("click", function (e) {
    const box = e.target.closest && e.target.closest(BOX);
    if (box) {
      // Shift-click ticks a range, as in a mail client.
      if (e.shiftKey && lastBox && lastBox !== box) {
        const boxes = rowBoxes();
        const a = boxes.indexOf(lastBox), b = boxes.indexOf(box);
        if (a >= 0 && b >= 0) boxes.slice(Math.min(a, b), Math.max(a, b) + 1).forEach(function (x) { x.checked = box.checked; });
      }
      lastBox = box;
    }
    // Close open row menus when clicking elsewhere.
    document.querySelectorAll("details.menu[open]").forEach(function (d) { if (!d.contains(e.target)) d.open = false; });
    const remove = e.target.closest && e.target.closest("[data-remove-flag]");
    if (remove) {
      const row = remove.closest(".flag-row");
      const next = row && (row.nextElementSibling || row.previousElementSibling);
      if (row) row.remove();
      const focusTarget = next ? next.querySelector(".flag-key-input") : document.querySelector(".add-flag");
      if (focusTarget) focusTarget.focus();
      document.body.dispatchEvent(new Event("flags-changed"));
    }
    const bottom = e.target.closest && e.target.closest("[data-log-bottom]");
    if (bottom) { stick = true; follow(); }
  });

  document.addEventListener("change", function (e) {
    if (e.target.id === "select-page") rowBoxes().forEach(function (b) { b.checked = e.target.checked; });
    if (e.target.matches && e.target.matches(BOX + ", #all-matching, #select-page")) updateSelection();
  });

  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    document.querySelectorAll("details.menu[open]").forEach(function (d) {
      d.open = false;
      const summary = d.querySelector("summary");
      if (summary) summary.focus();
    });
  });

  // A table swap keeps what the user ticked (rows still shown stay ticked); a live one waits while a menu is open.
  let keep = null;
  document.addEventListener("htmx:beforeSwap", function (e) {
    const target = e.detail.target;
    if (!target || target.id !== "experiment-table") return;
    const polled = e.detail.requestConfig && e.detail.requestConfig.elt === target;
    if (polled && document.querySelector("details.menu[open]")) { e.detail.shouldSwap = false; return; }
    keep = rowBoxes().filter(function (b) { return b.checked; }).map(function (b) { return b.value; });
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (keep) {
      const wanted = new Set(keep);
      rowBoxes().forEach(function (b) { b.checked = wanted.has(b.value); });
      keep = null;
    }
    updateSelection();
    follow();
  });
  document.addEventListener("DOMContentLoaded", function () { updateSelection(); follow(); });

  // --- flag editor: a row re-rendered for its new key or type keeps what was typed meanwhile
  let typed = null;
  document.addEventListener("htmx:beforeSwap", function (e) {
    const row = e.detail.target;
    if (!row || !row.classList || !row.classList.contains("flag-row")) return;
    const value = row.querySelector('input[type=text][name$="-value"]');
    typed = value && value.value ? { id: value.id, value: value.value } : null;
  });
  document.addEventListener("htmx:afterSwap", function () {
    if (!typed) return;
    const value = document.getElementById(typed.id);
    if (value && value.type === "text" && !value.value) value.value = typed.value;
    typed = null;
  });

  // --- flag editor: focus the key of a row just added -------------------------
  document.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "flag-rows") {
      const keys = e.detail.target.querySelectorAll(".flag-key-input");
      if (keys.length) keys[keys.length - 1].focus();
    }
  });

  // --- log: follow the bottom unless the user scrolled up ---------------------
  let stick = true;
  function follow() {
    const log = document.getElementById("log");
    if (log && stick) log.scrollTop = log.scrollHeight;
    const jump = document.querySelector("[data-log-bottom]");
    if (jump) jump.hidden = stick;
  }
  document.addEventListener("scroll", function (e) {
    if (!e.target || e.target.id !== "log") return;
    const log = e.target;
    stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    const jump = document.querySelector("[data-log-bottom]");
    if (jump) jump.hidden = stick;
  }, true);
  document.addEventListener("htmx:oobAfterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "log-panel") stick = true;
    follow();
  });
})();
