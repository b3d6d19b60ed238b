// SkyDeck's few behaviours beyond htmx: bulk selection, the flag editor, log following,
// times that count on, and a banner when SkyDeck stops answering.
(function () {
  "use strict";


  // Polls skip a beat while the tab is hidden or a row menu is open (a swap would close it).
  const ROW_MENU_OPEN = "details.menu[open]:not(.user-menu)";
  window.skydeckCanPoll = function () {
    return !document.hidden && !document.querySelector(ROW_MENU_OPEN);
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
    if (polled && document.querySelector(ROW_MENU_OPEN)) { e.detail.shouldSwap = false; return; }
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

  // --- forms: parts that apply only to some choices (SkyPilot's fields, max restarts, a random sweep's samples)
  function choiceOf(form, name) {
    const input = form.querySelector('[name="' + name + '"]:checked') ||
      form.querySelector('select[name="' + name + '"], input[name="' + name + '"]:not([type=radio])');
    return input ? input.value : "";
  }
  function applyShowIf(form) {
    form.querySelectorAll("[data-show-if]").forEach(function (el) {
      const rule = el.dataset.showIf.split("="), value = choiceOf(form, rule[0]), want = rule[1];
      const show = want.charAt(0) === "!" ? value !== want.slice(1) : value === want;
      el.hidden = !show && !el.querySelector(".errorlist");  // a part with an error stays in view
    });
  }
  document.addEventListener("change", function (e) {
    const form = e.target.form || (e.target.closest && e.target.closest("form"));
    if (form && form.querySelector("[data-show-if]")) applyShowIf(form);
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form").forEach(function (form) {
      if (form.querySelector("[data-show-if]")) applyShowIf(form);
    });
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

  // --- relative times: <time data-relative> counts on in the browser ----------------
  // So a polled fragment is drawn again only when something changed, not because the clock moved.
  // The server's clock counts (<body data-now>), not the browser's, which may be off.
  let skew = 0;
  function shortDuration(seconds) {
    const days = Math.floor(seconds / 86400), hours = Math.floor(seconds % 86400 / 3600);
    const minutes = Math.floor(seconds % 3600 / 60), secs = seconds % 60;
    if (days) return days + "d " + hours + "h";
    if (hours) return hours + "h " + minutes + "m";
    if (minutes) return minutes + "m " + secs + "s";
    return secs + "s";
  }
  function tick() {
    const now = Date.now() + skew;
    document.querySelectorAll("time[data-relative]").forEach(function (t) {
      const at = Date.parse(t.getAttribute("datetime"));
      if (isNaN(at)) return;
      const seconds = Math.floor((now - at) / 1000);
      const text = t.dataset.relative === "until"
        ? (seconds <= -1 ? "in " + shortDuration(-seconds) : "now")
        : shortDuration(Math.max(0, seconds));
      if (t.textContent !== text) t.textContent = text;
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    const serverNow = Number(document.body.dataset.now);
    if (serverNow) skew = serverNow * 1000 - Date.now();
    tick();
    window.setInterval(tick, 1000);
  });
  document.addEventListener("htmx:afterSettle", tick);

  // --- SkyDeck not answering: a banner, since when, gone by itself once a request gets through
  let downSince = null;
  function clock(date) {
    const two = function (n) { return String(n).padStart(2, "0"); };
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
  }
  function notAnswering() {
    if (downSince === null) downSince = new Date();
    const banner = document.getElementById("offline-banner");
    if (!banner) return;
    banner.querySelector("[data-since]").textContent = clock(downSince);
    banner.hidden = false;
    document.body.classList.add("is-offline");
  }
  function answering() {
    if (downSince === null) return;
    downSince = null;
    const banner = document.getElementById("offline-banner");
    if (banner) banner.hidden = true;
    document.body.classList.remove("is-offline");
  }
  // A request left without an answer for 20 s counts too (a server that hangs, not one that refuses).
  const pending = new Map();
  document.addEventListener("htmx:beforeRequest", function (e) {
    if (e.detail && e.detail.xhr) pending.set(e.detail.xhr, Date.now());
  });
  window.setInterval(function () {
    const now = Date.now();
    pending.forEach(function (started) { if (now - started > 20000) notAnswering(); });
  }, 5000);
  document.addEventListener("htmx:sendError", notAnswering);
  document.addEventListener("htmx:timeout", notAnswering);
  document.addEventListener("htmx:afterRequest", function (e) {
    const xhr = e.detail && e.detail.xhr;
    if (!xhr) return;
    pending.delete(xhr);
    // No answer at all (status 0) is told by sendError or timeout: an aborted request (a search
    // typed on) has status 0 too and says nothing. 502-504: a proxy (or SkyDeck's database) standing in.
    if (xhr.status >= 502 && xhr.status <= 504) notAnswering();
    else if (xhr.status > 0) answering();
  });
})();
