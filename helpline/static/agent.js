// Helpline inbox: the live queue. Plain JavaScript, no framework, nothing from another site.
// Speaks GET /agent/live (docs/agent-inbox.md, "The live queue"): hello with the CSRF token and
// the last cursor, then "ticket" frames that insert, update or remove rows. Customer text goes into
// the page with textContent only, never as HTML.
(function () {
  "use strict";

  var live = document.getElementById("live");
  var rows = document.getElementById("queue-rows");
  if (!live || !rows || !window.WebSocket) {
    return;
  }
  var table = document.getElementById("queue");
  var empty = document.getElementById("queue-empty");
  var statusEl = document.getElementById("live-status");
  var notifyButton = document.getElementById("notify-enable");
  var CURSOR_KEY = "helpline.inbox.cursor";
  var RELOAD_KEY = "helpline.inbox.reloadedAt";
  var PING_MS = 25000;
  var PONG_WAIT_MS = 10000;
  var STOP_CODES = { 4400: "Live updates stopped (protocol error): reload the page.",
                     4401: "Session ended: log in again.",
                     4403: "Live updates refused: reload the page." };

  // The page's own cursor is newer than anything stored by an earlier page.
  var cursor = live.getAttribute("data-cursor") || null;
  store(cursor);
  var socket = null;
  var attempt = 0;
  var pingTimer = null;
  var pongTimer = null;
  var notified = {};

  function store(value) {
    try {
      if (value) { sessionStorage.setItem(CURSOR_KEY, value); }
    } catch (e) { /* storage disabled: the cursor lives in memory only */ }
  }

  function stored() {
    try { return sessionStorage.getItem(CURSOR_KEY) || cursor; } catch (e) { return cursor; }
  }

  function setStatus(state, text) {
    statusEl.setAttribute("data-state", state);
    statusEl.textContent = text;
  }

  // --- rows ---------------------------------------------------------------------------------

  function ago(iso) {
    var seconds = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) { return seconds + " s ago"; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + " min ago"; }
    if (seconds < 86400) {
      return Math.floor(seconds / 3600) + " h " + Math.floor(seconds % 3600 / 60) + " min ago";
    }
    return Math.floor(seconds / 86400) + " d ago";
  }

  // SLA: the time left to the earliest running target, or how long it is overdue.
  function slaText(iso, breached) {
    if (!iso) { return breached ? "breached" : "\u2014"; }
    var seconds = Math.floor((Date.parse(iso) - Date.now()) / 1000);
    var span = Math.abs(seconds), text;
    if (span < 3600) { text = Math.max(1, Math.floor(span / 60)) + " min"; }
    else if (span < 86400) { text = Math.floor(span / 3600) + " h " + Math.floor(span % 3600 / 60) + " min"; }
    else { text = Math.floor(span / 86400) + " d " + Math.floor(span % 86400 / 3600) + " h"; }
    return (seconds < 0 ? "overdue " : "due in ") + text + (breached ? " (breached)" : "");
  }

  function slaCell(tr, iso, breached) {
    var td = document.createElement("td");
    td.className = "sla" + (breached ? " sla-breached" : "");
    var time = document.createElement("time");
    time.className = "sla-due";
    if (iso) { time.setAttribute("data-due", String(iso)); }
    if (breached) { time.setAttribute("data-breached", "1"); }
    time.textContent = slaText(iso, breached);
    td.appendChild(time);
    tr.appendChild(td);
  }

  function cell(tr, text, className, isolate) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    var holder = td;
    if (isolate) { holder = document.createElement("bdi"); td.appendChild(holder); }
    holder.textContent = text == null ? "" : String(text);
    tr.appendChild(td);
    return td;
  }

  function buildRow(row) {
    var tr = document.createElement("tr");
    tr.className = "state-" + String(row.state).replace(/[^a-z_]/g, "");
    tr.setAttribute("data-ticket", String(row.id));
    tr.setAttribute("data-ticket-id", String(row.id));
    tr.setAttribute("data-rank", String(row.rank));
    tr.setAttribute("data-updated-at", String(row.updated_at));
    tr.setAttribute("data-state", String(row.state));
    tr.setAttribute("data-priority", String(row.priority));
    tr.setAttribute("data-sla-due", row.sla_due_at ? String(row.sla_due_at) : "");
    var first = document.createElement("td");
    var link = document.createElement("a");
    link.href = "/agent/tickets/" + encodeURIComponent(String(row.id));
    link.textContent = String(row.id);
    first.appendChild(link);
    tr.appendChild(first);
    cell(tr, row.priority, "prio-" + String(row.priority).replace(/[^a-z]/g, ""), false);
    cell(tr, row.customer, null, true);
    cell(tr, row.preview, "preview", true);
    cell(tr, (row.reason || "") + (row.intent ? " \u00b7 " + row.intent : ""), null, false);
    cell(tr, row.channel + (row.language ? " \u00b7 " + row.language : ""), null, false);
    cell(tr, row.assignee ? row.assignee : "unassigned", null, !!row.assignee);
    var waiting = document.createElement("td");
    var time = document.createElement("time");
    time.setAttribute("datetime", String(row.updated_at));
    time.textContent = ago(row.updated_at);
    waiting.appendChild(time);
    tr.appendChild(waiting);
    slaCell(tr, row.sla_due_at, !!row.sla_breached);
    tr.classList.add("fresh");
    return tr;
  }

  function before(a, b) {
    // The queue's order (state.inbox.queue): soonest SLA due first (none: last), then most urgent
    // priority, then longest waiting, then lowest id.
    var da = a.getAttribute("data-sla-due"), db = b.getAttribute("data-sla-due");
    if (da !== db) {
      if (!da) { return false; }
      if (!db) { return true; }
      var na = Date.parse(da), nb = Date.parse(db);
      if (na !== nb) { return na < nb; }
    }
    var ra = Number(a.getAttribute("data-rank")), rb = Number(b.getAttribute("data-rank"));
    if (ra !== rb) { return ra < rb; }
    var ta = Date.parse(a.getAttribute("data-updated-at")), tb = Date.parse(b.getAttribute("data-updated-at"));
    if (ta !== tb) { return ta < tb; }
    return Number(a.getAttribute("data-ticket-id")) < Number(b.getAttribute("data-ticket-id"));
  }

  function findRow(id) {
    var all = rows.querySelectorAll("tr[data-ticket-id]");
    for (var i = 0; i < all.length; i++) {
      if (all[i].getAttribute("data-ticket-id") === String(id)) { return all[i]; }
    }
    return null;
  }

  function refreshCount() {
    var n = rows.querySelectorAll("tr[data-ticket-id]").length;
    table.hidden = n === 0;
    if (empty) { empty.hidden = n !== 0; }
    document.title = document.title.replace(/^Queue \(\d+\)/, "Queue (" + n + ")");
  }

  function apply(frame) {
    var id = frame.ticket_id;
    if (typeof id !== "number" || !isFinite(id)) { return; }
    var old = findRow(id);
    if (old) { old.parentNode.removeChild(old); }
    if (frame.row) {
      var tr = buildRow(frame.row);
      var all = rows.querySelectorAll("tr[data-ticket-id]");
      var next = null;
      for (var i = 0; i < all.length; i++) {
        if (before(tr, all[i])) { next = all[i]; break; }
      }
      rows.insertBefore(tr, next);
    }
    refreshCount();
  }

  function tick() {
    var times = rows.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      times[i].textContent = ago(times[i].getAttribute("datetime"));
    }
    var dues = document.querySelectorAll("time.sla-due");
    for (var j = 0; j < dues.length; j++) {
      dues[j].textContent = slaText(dues[j].getAttribute("data-due"), dues[j].hasAttribute("data-breached"));
    }
  }

  // --- notifications ------------------------------------------------------------------------

  function notificationsWanted() {
    return "Notification" in window && Notification.permission === "granted";
  }

  function showNotifyButton() {
    notifyButton.hidden = !("Notification" in window) || Notification.permission !== "default";
  }

  notifyButton.addEventListener("click", function () {
    var asked = Notification.requestPermission(showNotifyButton);
    if (asked && asked.then) { asked.then(showNotifyButton); }
  });

  function notifyEscalation(frame) {
    var row = frame.row;
    if (!row || frame.kind !== "escalated" || row.state !== "escalated" || notified[frame.event_id]) {
      return;
    }
    notified[frame.event_id] = true;
    if (!notificationsWanted()) { return; }
    // Notification text is plain text; the customer's words are never read as markup.
    var note = new Notification("New escalation #" + String(row.id), {
      body: String(row.customer || "") + ": " + String(row.preview || ""),
      tag: "helpline-ticket-" + String(row.id)
    });
    note.onclick = function () {
      window.focus();
      window.location.href = "/agent/tickets/" + encodeURIComponent(String(row.id));
    };
  }

  // --- the socket ---------------------------------------------------------------------------

  function clearTimers() {
    clearInterval(pingTimer);
    clearTimeout(pongTimer);
    pingTimer = pongTimer = null;
  }

  function connect() {
    setStatus("connecting", attempt ? "Reconnecting\u2026" : "Connecting\u2026");
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + window.location.host + "/agent/live");
    socket = ws;
    ws.onopen = function () {
      ws.send(JSON.stringify({
        type: "hello",
        csrf_token: live.getAttribute("data-csrf"),
        cursor: stored(),
        view: live.getAttribute("data-view") || "all",
        channel: live.getAttribute("data-channel") || null,
        priority: live.getAttribute("data-priority") || null,
        language: live.getAttribute("data-language") || null
      }));
      pingTimer = setInterval(function () {
        ws.send(JSON.stringify({ type: "ping" }));
        clearTimeout(pongTimer);
        // No answer: the connection is dead even if the browser has not noticed.
        pongTimer = setTimeout(function () { ws.close(); }, PONG_WAIT_MS);
      }, PING_MS);
    };
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      clearTimeout(pongTimer);
      if (frame.cursor) {
        cursor = frame.cursor;
        store(cursor);
      }
      if (frame.type === "ticket") {
        apply(frame);
        notifyEscalation(frame);
      } else if (frame.type === "synced") {
        attempt = 0;
        setStatus("live", "Live");
      }
    };
    ws.onclose = function (event) {
      clearTimers();
      if (socket !== ws) { return; }
      socket = null;
      if (STOP_CODES[event.code]) {
        setStatus("ended", STOP_CODES[event.code]);
        return;
      }
      if (event.code === 4409) {
        resync();
        return;
      }
      attempt += 1;
      // Exponential backoff with jitter, 1 s to 30 s; resumes from the stored cursor.
      var delay = Math.min(30000, 1000 * Math.pow(2, Math.min(attempt - 1, 5))) * (0.5 + Math.random() / 2);
      setStatus("reconnecting", "Offline: reconnecting in " + Math.round(delay / 1000) + " s");
      setTimeout(connect, delay);
    };
  }

  function resync() {
    // Too far behind to replay: the page itself is the fresh state. At most once a minute.
    var last = 0;
    try { last = Number(sessionStorage.getItem(RELOAD_KEY)) || 0; } catch (e) { /* ignore */ }
    if (Date.now() - last < 60000) {
      setStatus("ended", "Live updates stopped: reload the page.");
      return;
    }
    try {
      sessionStorage.setItem(RELOAD_KEY, String(Date.now()));
      sessionStorage.removeItem(CURSOR_KEY);
    } catch (e) { /* ignore */ }
    window.location.reload();
  }

  showNotifyButton();
  setInterval(tick, 30000);
  connect();
})();
