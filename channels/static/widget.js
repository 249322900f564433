/*
 * Helpline web-chat widget. Embed with one tag:
 *
 *   <script src="https://HOST/static/widget.js" data-helpline-url="https://HOST" defer></script>
 *
 * Options (data attributes on that tag, all optional):
 *   data-helpline-url  base URL of the Helpline server (default: where this script was loaded from)
 *   data-open          "true" opens the panel on page load
 *   data-title         panel title (default "Support")
 *
 * Plain JS, no dependencies. Talks the /ws/chat protocol: hello(session_id, last_seq) -> welcome,
 * backlog, live frames. Message text only ever reaches the page through textContent. A message whose
 * meta holds a CSAT prompt gets rating buttons (1-5), a comment box and Send (a "csat" frame).
 * While the conversation has no messages the welcome's greeting is the first bot bubble (shown, never
 * stored), with its suggested questions as buttons. The latest message's quick replies
 * (meta.quick_replies, 1-4 labels) are buttons under it; a click sends the label as the customer's
 * message, and the buttons go once a newer message arrives or one is used.
 * The transcript, last_seq and unsent messages are kept in localStorage (one record per server URL)
 * so a reload shows the history once and a reconnect asks only for what was missed.
 */
(function () {
  "use strict";

  if (window.__helplineWidget) return; // embedded twice: keep the first
  window.__helplineWidget = true;

  var script = document.currentScript ||
    document.querySelector('script[src*="widget.js"][data-helpline-url]') ||
    document.querySelector('script[src*="/static/widget.js"]');

  // Base URL: explicit option, else the script's own location minus /static/widget.js, so a server
  // mounted under a path prefix works too.
  function resolveBase() {
    var explicit = script && script.getAttribute("data-helpline-url");
    var raw = explicit || (script && script.src) || window.location.href;
    var url = new URL(raw, window.location.href);
    if (explicit) return url.href.replace(/\/+$/, "");
    var path = url.pathname.replace(/\/static\/widget\.js$/, "");
    if (path === url.pathname) path = ""; // not the standard path: fall back to the origin
    return (url.origin + path).replace(/\/+$/, "");
  }

  var BASE = resolveBase();
  var WS_URL = BASE.replace(/^http/, "ws") + "/ws/chat";
  var TITLE = (script && script.getAttribute("data-title")) || "Support";
  var OPEN_AT_START = script && script.getAttribute("data-open") === "true";
  var STORE_KEY = "helpline:" + BASE;
  var MAX_STORED_MESSAGES = 200;
  // The server stores and answers long texts itself, but closes the socket on frames over 256 KB;
  // such a message would be resent (and the socket closed) on every reconnect, so it never leaves.
  var MAX_SEND_CHARS = 10000;
  var PING_EVERY_MS = 25000;
  var PONG_TIMEOUT_MS = 10000;
  var BACKOFF_BASE_MS = 500;
  var BACKOFF_MAX_MS = 30000;
  var IDLE_CLOSE = 4000; // the server closed an idle socket: reconnect when the customer is back
  var AUTHOR_LABELS = { bot: "Assistant", agent: "Support agent", system: "", customer: "You" };
  var MAX_QUICK_REPLIES = 4;
  var MAX_QUICK_REPLY_CHARS = 80;

  // ---------------------------------------------------------------- persisted state

  function emptyState() {
    return { session_id: null, last_seq: 0, messages: [], outbox: [] };
  }

  function loadState() {
    try {
      var raw = window.localStorage.getItem(STORE_KEY);
      var parsed = raw ? JSON.parse(raw) : null;
      if (!parsed || typeof parsed !== "object") return emptyState();
      return {
        session_id: typeof parsed.session_id === "string" ? parsed.session_id : null,
        last_seq: typeof parsed.last_seq === "number" ? parsed.last_seq : 0,
        messages: Array.isArray(parsed.messages) ? parsed.messages : [],
        outbox: Array.isArray(parsed.outbox) ? parsed.outbox : []
      };
    } catch (e) {
      return emptyState(); // storage blocked or corrupt: run without it
    }
  }

  var state = loadState();

  function saveState() {
    // Another tab may have saved meanwhile: merge by seq so neither loses messages.
    var stored = loadState();
    if (stored.session_id === state.session_id) {
      var bySeq = {};
      stored.messages.concat(state.messages).forEach(function (m) {
        var earlier = bySeq[m.seq];
        // A rating sent from either tab stays sent.
        if (earlier && earlier.csat && earlier.csat.done && m.csat) m.csat.done = true;
        bySeq[m.seq] = m;
      });
      state.messages = Object.keys(bySeq).map(function (k) { return bySeq[k]; })
        .sort(function (a, b) { return a.seq - b.seq; });
      state.last_seq = Math.max(state.last_seq, stored.last_seq);
    }
    if (state.messages.length > MAX_STORED_MESSAGES) {
      state.messages = state.messages.slice(-MAX_STORED_MESSAGES);
    }
    try {
      window.localStorage.setItem(STORE_KEY, JSON.stringify(state));
    } catch (e) { /* quota or privacy mode: the session simply won't survive a reload */ }
  }

  function uuid4() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); });
    return h.slice(0, 4).join("") + "-" + h.slice(4, 6).join("") + "-" + h.slice(6, 8).join("") +
      "-" + h.slice(8, 10).join("") + "-" + h.slice(10).join("");
  }

  // ---------------------------------------------------------------- DOM

  function el(tag, className, attrs) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (attrs) Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  var uid = "hl-" + Math.random().toString(36).slice(2, 8);
  var root = el("div", "hl-root", { "data-helpline": "" });
  root.hidden = true; // until widget.css has loaded, so the page never shows it unstyled

  var launcher = el("button", "hl-launcher", {
    type: "button", "aria-controls": uid + "-panel", "aria-expanded": "false",
    "aria-label": "Open support chat"
  });
  launcher.appendChild(el("span", "hl-launcher-icon", { "aria-hidden": "true" }));
  var badge = el("span", "hl-badge", { "aria-hidden": "true" });
  badge.hidden = true;
  launcher.appendChild(badge);

  var panel = el("section", "hl-panel", {
    id: uid + "-panel", role: "dialog", "aria-modal": "false", "aria-labelledby": uid + "-title"
  });
  panel.hidden = true;

  var header = el("header", "hl-header");
  var titleBox = el("div", "hl-title-box");
  var title = el("h2", "hl-title", { id: uid + "-title" });
  title.textContent = TITLE;
  var status = el("p", "hl-status", { role: "status", "data-state": "connecting" });
  status.textContent = "Connecting…";
  titleBox.appendChild(title);
  titleBox.appendChild(status);
  var closeBtn = el("button", "hl-close", { type: "button", "aria-label": "Close support chat" });
  closeBtn.textContent = "×";
  header.appendChild(titleBox);
  header.appendChild(closeBtn);

  var list = el("ol", "hl-messages", {
    role: "log", "aria-live": "polite", "aria-relevant": "additions", "aria-label": "Conversation",
    tabindex: "0"
  });
  var typing = el("div", "hl-typing", { "aria-live": "polite" });
  typing.hidden = true;
  var typingText = el("span", "hl-visually-hidden");
  typingText.textContent = "Support is typing";
  typing.appendChild(typingText);
  for (var d = 0; d < 3; d++) typing.appendChild(el("span", "hl-dot", { "aria-hidden": "true" }));

  var form = el("form", "hl-composer");
  var label = el("label", "hl-visually-hidden", { "for": uid + "-input" });
  label.textContent = "Type your message";
  var input = el("textarea", "hl-input", {
    id: uid + "-input", rows: "1", placeholder: "Type your message…", autocomplete: "off",
    "aria-describedby": uid + "-hint"
  });
  var hint = el("span", "hl-visually-hidden", { id: uid + "-hint" });
  hint.textContent = "Enter sends, Shift+Enter adds a new line.";
  var sendBtn = el("button", "hl-send", { type: "submit" });
  sendBtn.textContent = "Send";
  form.appendChild(label);
  form.appendChild(input);
  form.appendChild(hint);
  form.appendChild(sendBtn);

  panel.appendChild(header);
  panel.appendChild(list);
  panel.appendChild(typing);
  panel.appendChild(form);
  root.appendChild(panel);
  root.appendChild(launcher);

  var css = el("link", null, { rel: "stylesheet", href: BASE + "/static/widget.css" });
  css.onload = css.onerror = function () {
    root.hidden = false;
    // Only now does the list have a size: a transcript restored before this would show its top.
    list.scrollTop = list.scrollHeight;
  };

  // ---------------------------------------------------------------- rendering

  var renderedSeqs = {};   // seq -> true, so a seq is shown once whatever path it arrives by
  var unread = 0;

  function formatTime(iso) {
    var t = iso ? new Date(iso) : new Date();
    if (isNaN(t.getTime())) return "";
    return t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function isNearBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function placeBySeq(node) {
    // Keep the list in seq order; unsent (no seq yet) bubbles stay at the bottom.
    var seq = Number(node.getAttribute("data-seq"));
    var children = list.children;
    for (var i = 0; i < children.length; i++) {
      var other = children[i].getAttribute("data-seq");
      if (other === null || other === "" || Number(other) > seq) {
        list.insertBefore(node, children[i]);
        return;
      }
    }
    list.appendChild(node);
  }

  function bubble(author, text, createdAt, className) {
    var kind = AUTHOR_LABELS.hasOwnProperty(author) ? author : "system";
    var item = el("li", className || "hl-msg hl-msg--" + kind);
    if (AUTHOR_LABELS[kind] && kind !== "customer") {
      var who = el("span", "hl-author");
      who.textContent = AUTHOR_LABELS[kind];
      item.appendChild(who);
    }
    var body = el("p", "hl-text");
    body.textContent = text; // never innerHTML: message text is untrusted
    item.appendChild(body);
    var meta = el("span", "hl-meta");
    var time = el("time", "hl-time");
    if (createdAt) time.setAttribute("datetime", createdAt);
    time.textContent = formatTime(createdAt);
    meta.appendChild(time);
    if (kind === "customer") {
      var delivery = el("span", "hl-delivery");
      meta.appendChild(delivery);
    }
    item.appendChild(meta);
    return item;
  }

  function setDelivery(item, what) {
    item.setAttribute("data-delivery", what);
    var node = item.querySelector(".hl-delivery");
    if (node) {
      // Delivered is the normal case and stays quiet; only the exceptions get a word.
      node.textContent = what === "sent" ? "" : what === "failed" ? "Not sent" : "Sending…";
    }
  }

  function findPending(clientId) {
    if (!clientId) return null;
    var items = list.querySelectorAll(".hl-msg--customer[data-client-id]");
    for (var i = 0; i < items.length; i++) {
      if (items[i].getAttribute("data-client-id") === clientId) return items[i];
    }
    return null;
  }

  function renderMessage(m, live) {
    if (renderedSeqs[m.seq]) return;
    var stick = isNearBottom();
    var mine = m.author === "customer" && findPending(m.client_message_id);
    if (mine) {
      mine.setAttribute("data-seq", String(m.seq));
      setDelivery(mine, "sent");
      placeBySeq(mine);
    } else {
      var item = bubble(m.author, m.text, m.created_at);
      item.setAttribute("data-seq", String(m.seq));
      if (m.client_message_id) item.setAttribute("data-client-id", m.client_message_id);
      if (m.csat) item.appendChild(csatBox(m));
      if (m.author === "customer") setDelivery(item, "sent");
      placeBySeq(item);
    }
    renderedSeqs[m.seq] = true;
    refreshQuickReplies();
    if (stick || !live) list.scrollTop = list.scrollHeight;
    if (live && m.direction === "outbound" && panel.hidden) {
      unread += 1;
      badge.textContent = String(unread);
      badge.hidden = false;
      launcher.setAttribute("aria-label", "Open support chat, " + unread + " unread");
    }
  }

  // ---------------------------------------------------------------- greeting and quick replies

  var greeting = null;      // the welcome's {text, suggestions}, once a welcome carried one
  var greetingNode = null;  // its bubble while shown (until the list is cleared or the page reloads)
  var quickNode = null;     // the one row of quick-reply buttons, under the latest message
  var quickKey = null;      // what quickNode answers: "greeting" or the message's seq
  var ackedSeq = 0;         // highest seq acknowledged to this page (its own message may not be back yet)

  function labels(value) {
    // 1-4 non-blank strings, as the server sends them; anything else shows no buttons.
    if (!Array.isArray(value)) return null;
    var shown = value.filter(function (v) {
      return typeof v === "string" && v.trim() !== "" && v.length <= MAX_QUICK_REPLY_CHARS;
    }).slice(0, MAX_QUICK_REPLIES);
    return shown.length ? shown : null;
  }

  function readGreeting(value) {
    if (!value || typeof value !== "object" || typeof value.text !== "string" || !value.text.trim()) return null;
    return { text: value.text, suggestions: labels(value.suggestions) || [] };
  }

  function renderGreeting(serverLastSeq) {
    // Only while the conversation has no messages, here and on the server; never stored.
    if (!greeting || greetingNode || serverLastSeq !== 0 || state.messages.length) return;
    greetingNode = bubble("bot", greeting.text, null, "hl-greeting");
    greetingNode.setAttribute("data-seq", "0");
    var time = greetingNode.querySelector(".hl-meta");
    if (time) greetingNode.removeChild(time);
    list.insertBefore(greetingNode, list.firstChild);
  }

  function latestMessage() {
    var latest = null;
    state.messages.forEach(function (m) { if (!latest || m.seq > latest.seq) latest = m; });
    return latest;
  }

  function currentQuickReplies() {
    // [key, anchor seq, labels, group name] of what to offer now, or null: the latest message's
    // quick replies (or the greeting's suggestions while there is no message), unless the customer
    // has already answered (a message waiting in the outbox, or acknowledged and not back yet).
    if (state.outbox.length) return null;
    var latest = latestMessage();
    if (latest) {
      if (latest.seq < ackedSeq || latest.direction !== "outbound" || !latest.quick_replies) return null;
      return [String(latest.seq), latest.seq, latest.quick_replies, "Quick replies"];
    }
    if (greetingNode && greeting.suggestions.length && !ackedSeq) {
      return ["greeting", 0, greeting.suggestions, "Suggested questions"];
    }
    return null;
  }

  function refreshQuickReplies() {
    var offer = currentQuickReplies();
    var key = offer && offer[0];
    if (key === quickKey && (!quickNode || quickNode.parentNode === list)) return;
    if (quickNode && quickNode.parentNode) quickNode.parentNode.removeChild(quickNode);
    quickNode = null;
    quickKey = key;
    if (!offer) return;
    var item = el("li", "hl-quick", { "data-seq": String(offer[1] + 0.1) });
    var group = el("div", "hl-quick-group", { role: "group", "aria-label": offer[3] });
    offer[2].forEach(function (text) {
      var button = el("button", "hl-quick-reply", { type: "button" });
      button.textContent = text; // never innerHTML: labels come from config and the bot, untrusted
      button.addEventListener("click", function () { pickQuickReply(text); });
      group.appendChild(button);
    });
    item.appendChild(group);
    quickNode = item;
    var stick = isNearBottom();
    placeBySeq(item);
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function pickQuickReply(text) {
    sendText(text);
    input.focus(); // the buttons are gone: keep the keyboard in the conversation
  }

  // ---------------------------------------------------------------- satisfaction rating (CSAT)

  var CSAT_MAX_COMMENT = 1000;
  var CSAT_THANKS = "Thanks for your feedback";
  var CSAT_FINAL_ERRORS = { no_such_ticket: true, not_asked: true };

  function csatFor(ticket) {
    return list.querySelector('.hl-csat[data-ticket="' + Number(ticket) + '"]');
  }

  function csatDone(box) {
    box.setAttribute("data-state", "done");
    var controls = box.querySelectorAll("button, textarea");
    for (var i = 0; i < controls.length; i++) controls[i].disabled = true;
    box.querySelector(".hl-csat-status").textContent = CSAT_THANKS;
  }

  function csatBox(m) {
    // A prompt the server sent when the ticket was resolved: five buttons, an optional comment,
    // Send. Answered once; the state is kept with the message, so a reload shows it done.
    var ticket = m.csat.ticket;
    var box = el("div", "hl-csat", { role: "group", "aria-label": "Rate this conversation", "data-ticket": String(ticket) });
    var scale = el("div", "hl-csat-scale");
    var chosen = null;
    var rates = [];
    for (var n = 1; n <= 5; n++) {
      var rate = el("button", "hl-csat-rate", {
        type: "button", "data-rating": String(n), "aria-pressed": "false",
        "aria-label": n + " out of 5" + (n === 1 ? " (poor)" : n === 5 ? " (excellent)" : "")
      });
      rate.textContent = String(n);
      rates.push(rate);
      scale.appendChild(rate);
    }
    var commentId = uid + "-csat-" + ticket;
    var label = el("label", "hl-visually-hidden", { "for": commentId });
    label.textContent = "Comment (optional)";
    var comment = el("textarea", "hl-csat-comment", {
      id: commentId, rows: "2", maxlength: String(CSAT_MAX_COMMENT), placeholder: "Comment (optional)"
    });
    var submitBtn = el("button", "hl-csat-send", { type: "button" });
    submitBtn.textContent = "Send";
    submitBtn.disabled = true;
    var note = el("p", "hl-csat-status", { role: "status" });
    rates.forEach(function (button) {
      button.addEventListener("click", function () {
        chosen = Number(button.getAttribute("data-rating"));
        rates.forEach(function (b) { b.setAttribute("aria-pressed", b === button ? "true" : "false"); });
        submitBtn.disabled = false;
      });
    });
    submitBtn.addEventListener("click", function () {
      if (!chosen) return;
      var frame = { type: "csat", ticket: ticket, rating: chosen };
      if (comment.value.trim()) frame.comment = comment.value.slice(0, CSAT_MAX_COMMENT);
      if (!ready || !send(frame)) {
        note.textContent = "Not connected. Please try again in a moment.";
        return;
      }
      box.setAttribute("data-state", "sending");
      rates.concat([submitBtn]).forEach(function (b) { b.disabled = true; });
      comment.disabled = true;
      note.textContent = "Sending…";
    });
    box.appendChild(scale);
    box.appendChild(label);
    box.appendChild(comment);
    box.appendChild(submitBtn);
    box.appendChild(note);
    if (m.csat.done) csatDone(box);
    return box;
  }

  function csatAnswered(ticket) {
    state.messages.forEach(function (m) {
      if (m.csat && m.csat.ticket === ticket) m.csat.done = true;
    });
    saveState();
    var box = csatFor(ticket);
    if (box) csatDone(box);
  }

  function csatRefused(ticket, code, text) {
    var box = csatFor(ticket);
    if (!box) {
      renderNotice(text, "error");
      return;
    }
    box.setAttribute("data-state", "error");
    box.querySelector(".hl-csat-status").textContent = text;
    if (CSAT_FINAL_ERRORS[code]) return;
    var controls = box.querySelectorAll(".hl-csat-rate, .hl-csat-comment");
    for (var i = 0; i < controls.length; i++) controls[i].disabled = false;
    box.querySelector(".hl-csat-send").disabled = !box.querySelector('.hl-csat-rate[aria-pressed="true"]');
  }

  function renderPending(entry) {
    var item = bubble("customer", entry.text, entry.created_at);
    item.setAttribute("data-client-id", entry.client_message_id);
    setDelivery(item, "sending");
    list.appendChild(item);
    refreshQuickReplies();
    list.scrollTop = list.scrollHeight;
  }

  function renderNotice(text, kind) {
    var item = el("li", "hl-notice hl-notice--" + (kind || "info"), kind === "error" ? { role: "alert" } : null);
    item.textContent = text;
    // Sorts after what has arrived so far and before anything newer.
    item.setAttribute("data-seq", String(state.last_seq + 0.5));
    list.appendChild(item);
    list.scrollTop = list.scrollHeight;
  }

  function clearList() {
    while (list.firstChild) list.removeChild(list.firstChild);
    renderedSeqs = {};
    greetingNode = quickNode = quickKey = null;
    ackedSeq = 0;
  }

  function setStatus(kind, text) {
    status.setAttribute("data-state", kind);
    status.textContent = text;
  }

  // ---------------------------------------------------------------- connection

  var ws = null;
  var ready = false;            // welcome received on the current socket
  var attempt = 0;
  var retryTimer = null;
  var pingTimer = null;
  var pongTimer = null;
  var inFlight = [];            // client_message_ids sent on this socket and not yet acked
  var paused = false;           // closed for inactivity; reconnect on the next interaction

  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function flushOutbox() {
    if (!ready) return;
    state.outbox.forEach(function (entry) {
      if (inFlight.indexOf(entry.client_message_id) !== -1) return;
      if (send({ type: "message", text: entry.text, client_message_id: entry.client_message_id })) {
        inFlight.push(entry.client_message_id);
      }
    });
  }

  function settle(clientId, seq) {
    // The message is stored: drop it from the outbox, give its bubble its seq.
    var before = state.outbox.length;
    state.outbox = state.outbox.filter(function (e) { return e.client_message_id !== clientId; });
    inFlight = inFlight.filter(function (id) { return id !== clientId; });
    if (typeof seq === "number" && seq > ackedSeq) ackedSeq = seq;
    var item = findPending(clientId);
    if (item && typeof seq === "number" && !item.getAttribute("data-seq")) {
      item.setAttribute("data-seq", String(seq));
      placeBySeq(item);
    }
    if (item) setDelivery(item, "sent");
    if (before !== state.outbox.length) saveState();
    refreshQuickReplies();
  }

  function fail(clientId, message) {
    state.outbox = state.outbox.filter(function (e) { return e.client_message_id !== clientId; });
    inFlight = inFlight.filter(function (id) { return id !== clientId; });
    saveState();
    var item = findPending(clientId);
    if (item) setDelivery(item, "failed");
    renderNotice(message, "error");
    refreshQuickReplies(); // not sent: the options it answered are open again
  }

  function schedulePing() {
    clearTimeout(pingTimer);
    clearTimeout(pongTimer);
    pingTimer = setTimeout(function () {
      if (!send({ type: "ping" })) return;
      // No frame at all within the timeout: the socket is half-open, replace it.
      pongTimer = setTimeout(function () { if (ws) ws.close(); }, PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  function onFrame(frame) {
    schedulePing(); // any frame proves the socket alive
    switch (frame.type) {
      case "welcome":
        if (frame.session_id !== state.session_id || frame.resync) {
          // New session (first visit, or the server no longer knows ours), or the server has
          // fewer messages than we remember (e.g. a restored database): show what the server
          // sends from here on instead of what we had.
          var outbox = state.outbox;
          state = emptyState();
          state.session_id = frame.session_id;
          state.outbox = outbox;
          clearList();
          outbox.forEach(renderPending);
          saveState();
        }
        greeting = readGreeting(frame.greeting) || greeting;
        renderGreeting(frame.last_seq);
        refreshQuickReplies();
        ready = true;
        attempt = 0;
        setStatus("online", "Online");
        flushOutbox();
        break;
      case "message":
        if (typeof frame.seq !== "number") return;
        if (frame.seq > state.last_seq) state.last_seq = frame.seq;
        if (frame.client_message_id) settle(frame.client_message_id, frame.seq);
        if (!renderedSeqs[frame.seq]) {
          // meta (tier, intent, confidence) is internal: never stored or shown.
          var m = {
            seq: frame.seq, direction: frame.direction, author: frame.author,
            text: frame.text == null ? "" : String(frame.text),
            created_at: frame.created_at || null, client_message_id: frame.client_message_id || null
          };
          // Except a rating prompt: the ticket it rates, and whether it was answered already.
          var prompt = frame.meta && frame.meta.csat;
          if (prompt && typeof prompt.ticket === "number") m.csat = { ticket: prompt.ticket, done: !!prompt.rated };
          // And quick replies: kept with the message, shown while it is the latest.
          var quick = frame.direction === "outbound" && frame.meta && labels(frame.meta.quick_replies);
          if (quick) m.quick_replies = quick;
          state.messages.push(m);
          renderMessage(m, true);
        }
        if (frame.direction === "outbound") typing.hidden = true;
        saveState();
        break;
      case "ack":
        settle(frame.client_message_id, frame.seq);
        break;
      case "csat_result":
        // "stored" or "already_rated": either way this prompt is answered.
        if (typeof frame.ticket === "number") csatAnswered(frame.ticket);
        break;
      case "typing":
        typing.hidden = !frame.on;
        if (frame.on && isNearBottom()) list.scrollTop = list.scrollHeight;
        break;
      case "error":
        var text = frame.message || "Something went wrong.";
        if (frame.hasOwnProperty("ticket")) { // the answer to a rating
          csatRefused(frame.ticket, frame.code, text);
          break;
        }
        if (frame.code === "bad_session") {
          // The server did not issue our session id (or no longer accepts it): ask for a new
          // one at once; unsent messages stay queued for it.
          state.session_id = null;
          state.last_seq = 0;
          saveState();
          attempt = 0;
          break;
        }
        if (frame.code === "unavailable") {
          // Not stored, but nothing wrong with the message: keep it queued and reconnect (with
          // backoff); the outbox is sent again on connect.
          renderNotice(text, "info");
          if (ws) ws.close();
          break;
        }
        var target = frame.client_message_id ||
          ((frame.code === "message_too_long" || frame.code === "empty_message") && inFlight[0]);
        if (target) fail(target, text);
        else renderNotice(text, "error");
        break;
      default:
        break; // pong and future frame types
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    if (ws) return;
    setStatus("connecting", attempt ? "Reconnecting…" : "Connecting…");
    var socket;
    try {
      socket = new WebSocket(WS_URL);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = socket;
    ready = false;
    inFlight = [];
    socket.onopen = function () {
      send({ type: "hello", session_id: state.session_id, last_seq: state.last_seq });
      schedulePing();
    };
    socket.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame && typeof frame === "object") onFrame(frame);
    };
    socket.onclose = function (event) {
      if (ws !== socket) return;
      ws = null;
      ready = false;
      inFlight = [];
      typing.hidden = true;
      clearTimeout(pingTimer);
      clearTimeout(pongTimer);
      if (event.code === IDLE_CLOSE) {
        // Closed for inactivity: stay disconnected until the customer comes back.
        paused = true;
        setStatus("paused", "Paused. Type a message to continue.");
        return;
      }
      scheduleReconnect();
    };
  }

  function resume() {
    if (!paused) return;
    paused = false;
    attempt = 0;
    connect();
  }

  function scheduleReconnect() {
    clearTimeout(retryTimer);
    if (!navigator.onLine) {
      setStatus("offline", "Offline. Messages will be sent when you are back.");
      return; // the "online" event reconnects
    }
    // Exponential backoff with full jitter, so a restarted server is not hit by every tab at once.
    var cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
    var delay = cap / 2 + Math.random() * cap / 2;
    attempt += 1;
    setStatus("reconnecting", "Connection lost. Reconnecting…");
    retryTimer = setTimeout(connect, delay);
  }

  window.addEventListener("online", function () { attempt = 0; if (!paused) connect(); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") resume();
  });
  window.addEventListener("offline", function () {
    if (ws) ws.close(); // a socket on a dead network may look open for minutes
  });
  window.addEventListener("storage", function (event) {
    // Another tab started a new session: follow it instead of splitting the conversation.
    if (event.key !== STORE_KEY) return;
    var other = loadState();
    if (!other.session_id || other.session_id === state.session_id) return;
    var mine = state.outbox;
    state = other;
    mine.forEach(function (entry) {
      var known = state.outbox.some(function (e) { return e.client_message_id === entry.client_message_id; });
      if (!known) state.outbox.push(entry);
    });
    clearList();
    state.messages.forEach(function (m) { renderMessage(m, false); });
    state.outbox.forEach(renderPending);
    if (ws) ws.close(); // reconnects with the adopted session_id and last_seq
  });

  // ---------------------------------------------------------------- user actions

  function submit() {
    var text = input.value;
    if (!text.trim()) return;
    if (text.length > MAX_SEND_CHARS) {
      renderNotice("That message is too long to send (" + text.length + " characters). Please keep it under " +
        MAX_SEND_CHARS + ".", "error");
      return;
    }
    sendText(text);
    input.value = "";
    autosize();
  }

  function sendText(text) {
    // A customer message, typed or picked from quick replies: queued with its own id (idempotent
    // re-sends), shown at once, sent when the socket is ready.
    var entry = { client_message_id: uuid4(), text: text, created_at: new Date().toISOString() };
    state.outbox.push(entry);
    saveState();
    renderPending(entry);
    flushOutbox();
    paused = false;
    if (!ready && !ws) connect();
  }

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 120) + "px";
  }

  function open(focus) {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", "Close support chat");
    root.classList.add("hl-root--open");
    unread = 0;
    badge.hidden = true;
    list.scrollTop = list.scrollHeight;
    if (focus !== false) input.focus();
  }

  function close() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", "Open support chat");
    root.classList.remove("hl-root--open");
    launcher.focus();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    submit();
    input.focus();
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", autosize);
  input.addEventListener("focus", resume);
  launcher.addEventListener("click", function () { if (panel.hidden) open(); else close(); });
  closeBtn.addEventListener("click", close);
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape") close();
  });

  // ---------------------------------------------------------------- start

  function start() {
    document.head.appendChild(css);
    document.body.appendChild(root);
    state.messages.forEach(function (m) { renderMessage(m, false); });
    state.outbox.forEach(renderPending);
    window.Helpline = { open: function () { open(true); }, close: close };
    if (OPEN_AT_START) open(false); // shown, but focus is not taken from the host page on load
    connect();
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
