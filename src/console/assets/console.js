// Herald's console: the little behaviour server-rendered pages cannot have. Everything
// here is an enhancement; forms still post without it.
(function () {
  "use strict";

  // Times arrive in UTC; show them in the browser's zone, with UTC kept on hover.
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var at = new Date(el.getAttribute("datetime"));
    if (isNaN(at)) return;
    el.textContent = at.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  });

  // Dialogs: open as modal (focus stays inside, Escape closes).
  function openDialog(dialog) {
    if (dialog.open) dialog.close();
    dialog.showModal();
    var invalid = dialog.querySelector("[aria-invalid=true]");
    (invalid || dialog.querySelector("input:not([type=hidden])")).focus();
  }
  document.querySelectorAll("[data-open-dialog]").forEach(function (opener) {
    opener.addEventListener("click", function (e) {
      var dialog = document.getElementById(opener.getAttribute("data-open-dialog"));
      if (!dialog || !dialog.showModal) return;
      e.preventDefault();
      openDialog(dialog);
    });
  });
  document.querySelectorAll("dialog[open]").forEach(openDialog);
  document.querySelectorAll("[data-close-dialog]").forEach(function (button) {
    button.addEventListener("click", function () { button.closest("dialog").close(); });
  });

  // The endpoint dialog: pick a trigger, tick its events, add them to the list.
  var trigger = document.getElementById("ep-trigger");
  var chosen = document.getElementById("chosen");
  var status = document.getElementById("add-events-status");
  function visibleEvents() {
    return document.querySelector(".trigger-events[data-trigger='" + CSS.escape(trigger.value) + "']");
  }
  function refreshEmpty() {
    document.getElementById("chosen-empty").hidden = chosen.children.length > 0;
  }
  if (trigger && chosen) {
    trigger.addEventListener("change", function () {
      document.querySelectorAll(".trigger-events").forEach(function (set) {
        set.hidden = set.getAttribute("data-trigger") !== trigger.value;
      });
    });
    document.getElementById("add-events").addEventListener("click", function () {
      var set = visibleEvents();
      var ticked = Array.prototype.filter.call(set.querySelectorAll("[data-event]"), function (box) { return box.checked; });
      if (ticked.length === 0) {
        status.textContent = "Tick one or more events of " + trigger.value + " first.";
        return;
      }
      var item = chosen.querySelector("li[data-trigger='" + CSS.escape(trigger.value) + "']");
      if (!item) {
        item = document.createElement("li");
        item.setAttribute("data-trigger", trigger.value);
        var name = document.createElement("strong");
        name.textContent = trigger.value;
        var chips = document.createElement("span");
        chips.className = "chips";
        var remove = document.createElement("button");
        remove.type = "button";
        remove.className = "link remove";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", "Remove the " + trigger.value + " events");
        item.append(name, " ", chips, " ", remove);
        chosen.appendChild(item);
      }
      var chips = item.querySelector(".chips");
      ticked.forEach(function (box) {
        box.checked = false;
        if (item.querySelector("input[value='" + CSS.escape(box.value) + "']")) return;
        var chip = document.createElement("span");
        chip.className = "chip";
        chip.textContent = box.value;
        var field = document.createElement("input");
        field.type = "hidden";
        field.name = "events";
        field.value = box.value;
        chip.appendChild(field);
        chips.appendChild(chip);
      });
      status.textContent = "Added " + ticked.length + " event" + (ticked.length > 1 ? "s" : "") + " of " + trigger.value + ".";
      refreshEmpty();
    });
    chosen.addEventListener("click", function (e) {
      if (!e.target.classList.contains("remove")) return;
      var item = e.target.closest("li");
      status.textContent = "Removed the " + item.getAttribute("data-trigger") + " events.";
      item.remove();
      refreshEmpty();
      trigger.focus();
    });
  }

  // "Resend all failed since": the picker gives a local time; the server wants UTC.
  var recover = document.getElementById("recover-form");
  if (recover) {
    recover.addEventListener("submit", function () {
      var local = document.getElementById("recover-local").value;
      var at = new Date(local);
      document.getElementById("recover-since").value = isNaN(at) ? local : at.toISOString();
    });
  }

  // A secret that was asked for is below the history: bring it into view.
  var key = document.getElementById("secret-key");
  if (key) key.scrollIntoView({ block: "center" });

  // The side panel: focus it when it opens; Escape closes it.
  var panel = document.getElementById("delivery-panel");
  if (panel) {
    document.getElementById("panel-title").focus();
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && !document.querySelector("dialog[open]")) {
        window.location.href = panel.getAttribute("data-close");
      }
    });
  }
})();
