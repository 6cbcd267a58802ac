// The console: a small single-page UI on chatpool.js (the reference client).
// Plain ES modules, no build step; every text goes in through textContent.

import { Chatpool } from "/console/chatpool.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "chatpool.token";
/** Pause before a read marker is sent, so a burst of messages costs one. */
const READ_DELAY_MS = 300;

const chat = new Chatpool({ token: sessionStorage.getItem(TOKEN_KEY) });
const state = fresh();

function fresh() {
  return {
    rooms: new Map(), // id → room object (with last_read_seq, unread)
    all: false, // the all-rooms view (agents and admins)
    mine: new Set(), // ids of the caller's own rooms (joined for live unread counts)
    listed: 0, // the latest room-list request, so an older answer is dropped
    current: null, // the open room's id
    shown: new Map(), // seq → <li> of the open room
    oldest: null, // lowest seq shown
    newest: 0, // highest seq shown
    receipts: new Map(), // user id → {username, seq}: how far the others read
    online: new Map(), // user id → username, in the open room
    asked: new Map(), // room id → the read marker last asked for
    readTimer: null,
    typingTimer: null,
    lastTyping: 0,
    wasOffline: false, // the socket dropped since the open room was read
  };
}

function me() {
  return chat.user;
}

function staff() {
  return me() && (me().role === "agent" || me().role === "admin");
}

function showError(id, e) {
  $(id).textContent = e ? e.message || String(e) : "";
}

// ---- signing in and out -----------------------------------------------------

async function start() {
  if (chat.token) {
    try {
      await chat.me();
      return enter();
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
      chat.token = null;
    }
  }
  showAuth();
}

/** Forgets everything of the signed-in user, on screen and in memory. */
function reset() {
  chat.close();
  clearTimeout(state.readTimer);
  clearTimeout(state.typingTimer);
  Object.assign(state, fresh());
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["rooms", "messages", "results"]) $(id).replaceChildren();
  delete $("rooms").dataset.ids;
  for (const id of ["typing", "receipts", "presence", "room-title", "room-error", "whoami"]) {
    $(id).textContent = "";
  }
  $("room").hidden = true;
  $("all-rooms").checked = false;
  showAuth();
}

function showAuth() {
  $("auth").hidden = false;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("whoami").hidden = true;
  $("username").focus();
}

async function signIn(register) {
  showError("auth-error", null);
  const username = $("username").value.trim();
  const password = $("password").value;
  try {
    if (register) await chat.register(username, password, $("display-name").value.trim());
    else await chat.login(username, password);
    sessionStorage.setItem(TOKEN_KEY, chat.token);
    $("password").value = "";
    await enter();
  } catch (e) {
    showError("auth-error", e);
  }
}

async function enter() {
  $("auth").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("whoami").hidden = false;
  $("whoami").textContent = `${me().display_name} (${me().username}, ${me().role})`;
  $("all-label").hidden = !staff();
  chat.connect();
  await loadRooms();
}

// ---- rooms -------------------------------------------------------------------

async function loadRooms() {
  const ticket = ++state.listed;
  const all = state.all;
  const rooms = await chat.rooms({ all });
  if (ticket !== state.listed) return; // a newer list was asked for
  state.rooms = new Map(rooms.map((r) => [r.id, r]));
  // Joined for live unread counts: every room of the caller's own; in the
  // all-rooms view only the open one.
  if (!all) {
    state.mine = new Set(rooms.map((r) => r.id));
    for (const r of rooms) chat.join(r.id, r.last_seq);
  }
  renderRooms();
}

/** The room list: rebuilt when its rooms change, else updated in place (keeps focus). */
function renderRooms() {
  const list = $("rooms");
  const ids = [...state.rooms.keys()].join(",");
  if (list.dataset.ids !== ids) {
    list.dataset.ids = ids;
    list.replaceChildren();
    for (const r of state.rooms.values()) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.room = r.id;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = r.name;
      button.append(name);
      button.addEventListener("click", () => openRoom(r.id));
      li.append(button);
      list.append(li);
    }
  }
  for (const button of list.querySelectorAll("button[data-room]")) {
    const r = state.rooms.get(Number(button.dataset.room));
    if (!r) continue;
    if (r.id === state.current) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
    let badge = button.querySelector(".badge");
    if (r.unread > 0) {
      if (!badge) {
        badge = document.createElement("span");
        badge.className = "badge";
        button.append(badge);
      }
      const count = String(r.unread);
      if (badge.dataset.count !== count) {
        badge.dataset.count = count;
        badge.replaceChildren(count, hiddenText(" unread"));
      }
    } else if (badge) {
      badge.remove();
    }
  }
}

function hiddenText(text) {
  const span = document.createElement("span");
  span.className = "visually-hidden";
  span.textContent = text;
  return span;
}

async function openRoom(id) {
  const previous = state.current;
  // A room opened from the all-rooms view or a search is left again, so an
  // agent does not stay "online" in every room they looked at.
  if (previous !== null && previous !== id && !isMine(previous)) chat.leave(previous);
  state.current = id;
  state.shown.clear();
  state.receipts.clear();
  state.online.clear();
  state.oldest = null;
  state.newest = 0;
  state.wasOffline = false;
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("receipts").textContent = "";
  $("presence").textContent = "";
  showError("room-error", null);
  const room = state.rooms.get(id);
  $("room").hidden = false;
  $("room-title").textContent = room ? room.name : `Room ${id}`;
  renderRooms();
  try {
    const page = await chat.history(id);
    if (state.current !== id) return;
    for (const m of page.messages) show(m);
    $("older").hidden = !page.has_more;
    chat.join(id, page.last_seq);
    await loadPresence(id);
    markRead();
    $("body").focus();
  } catch (e) {
    showError("room-error", e);
  }
}

function isMine(id) {
  return state.mine.has(id);
}

async function loadPresence(id) {
  const online = await chat.presence(id);
  if (state.current !== id) return;
  state.online = new Map(online.map((u) => [u.id, u.username]));
  renderPresence();
}

async function loadOlder() {
  const id = state.current;
  if (id === null || state.oldest === null) return;
  try {
    const page = await chat.history(id, { beforeSeq: state.oldest });
    if (state.current !== id) return;
    const list = $("messages");
    const keep = list.scrollHeight - list.scrollTop;
    for (const m of page.messages) show(m, false);
    list.scrollTop = list.scrollHeight - keep;
    $("older").hidden = !page.has_more;
  } catch (e) {
    showError("room-error", e);
  }
}

/**
 * After the socket came back: the open room's shown messages are read again
 * (edits and deletes made meanwhile), and who is online; with more than 1000
 * missed (`truncated`), the room is simply opened again.
 */
async function resync(joined) {
  const id = state.current;
  if (joined.truncated) return openRoom(id);
  try {
    let after = state.oldest === null ? joined.last_seq : state.oldest - 1;
    while (after < state.newest) {
      const page = await chat.history(id, { afterSeq: after, limit: 200 });
      if (state.current !== id) return;
      for (const m of page.messages) {
        const li = state.shown.get(m.seq);
        if (li) fill(li, m);
      }
      if (!page.has_more || !page.messages.length) break;
      after = page.messages[page.messages.length - 1].seq;
    }
    await loadPresence(id);
  } catch (e) {
    showError("room-error", e);
  }
}

// ---- messages ----------------------------------------------------------------

/** Shows `m` in seq order (a live message may overtake the history page). */
function show(m, follow = true) {
  if (state.shown.has(m.seq)) return;
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = document.createElement("li");
  li.dataset.seq = m.seq;
  fill(li, m);
  state.shown.set(m.seq, li);
  let after = null; // the first shown message with a higher seq
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    if (Number(node.dataset.seq) < m.seq) break;
    after = node;
  }
  list.insertBefore(li, after);
  state.newest = Math.max(state.newest, m.seq);
  state.oldest = state.oldest === null ? m.seq : Math.min(state.oldest, m.seq);
  if (follow && atBottom) list.scrollTop = list.scrollHeight;
}

function fill(li, m) {
  li.replaceChildren();
  li.className = m.deleted_at ? "deleted" : "";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.author.display_name;
  const time = document.createElement("time");
  time.dateTime = m.created_at;
  time.textContent = new Date(m.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = m.deleted_at ? "(deleted)" : m.body;
  li.append(who, time, body);
  if (m.edited_at && !m.deleted_at) {
    const edited = document.createElement("span");
    edited.className = "edited";
    edited.textContent = " (edited)";
    li.append(edited);
  }
  if (m.deleted_at) return;
  const mine = me() && m.author.id === me().id;
  if (mine) li.append(action("Edit", `Edit message ${m.seq}`, () => startEdit(li, m)));
  if (mine || staff()) li.append(action("Delete", `Delete message ${m.seq}`, () => remove(m)));
}

function action(label, name, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "quiet";
  b.textContent = label;
  b.setAttribute("aria-label", name);
  b.addEventListener("click", onClick);
  return b;
}

function startEdit(li, m) {
  const form = document.createElement("form");
  form.className = "row";
  const label = document.createElement("label");
  label.className = "grow";
  label.textContent = `Edit message ${m.seq} `;
  const input = document.createElement("textarea");
  input.value = m.body;
  input.required = true;
  input.maxLength = 4000;
  input.rows = 2;
  label.append(input);
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  form.append(label, save, action("Cancel", `Cancel editing message ${m.seq}`, () => fill(li, m)));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      fill(li, await chat.edit(m.room_id, m.seq, input.value));
    } catch (err) {
      showError("room-error", err);
    }
  });
  li.replaceChildren(form);
  input.focus();
}

async function remove(m) {
  try {
    await chat.remove(m.room_id, m.seq);
  } catch (e) {
    showError("room-error", e);
  }
}

/** Moves the marker to the newest message shown, soon (one call for a burst). */
function markRead() {
  clearTimeout(state.readTimer);
  state.readTimer = setTimeout(sendRead, READ_DELAY_MS);
}

async function sendRead() {
  const id = state.current;
  const room = state.rooms.get(id);
  const seq = state.newest;
  if (id === null || seq === 0 || document.hidden) return;
  if ((room && room.last_read_seq >= seq) || (state.asked.get(id) ?? 0) >= seq) return;
  state.asked.set(id, seq);
  try {
    const marker = chat.online ? await chat.read(id, seq) : (await chat.markRead(id, seq)).last_read_seq;
    setMarker(id, marker);
  } catch {
    state.asked.delete(id); // asked again with the next message
  }
}

function setMarker(id, seq) {
  const room = state.rooms.get(id);
  if (!room || seq <= room.last_read_seq) return;
  room.last_read_seq = seq;
  room.unread = Math.max(0, room.last_seq - seq);
  renderRooms();
}

function renderReceipts() {
  const parts = [...state.receipts.values()].map((r) => `${r.username} (up to #${r.seq})`);
  $("receipts").textContent = parts.length ? `Read by ${parts.join(", ")}` : "";
}

function renderPresence() {
  const names = [...state.online.values()].sort();
  $("presence").textContent = names.length ? names.join(", ") : "nobody";
}

// ---- live events ---------------------------------------------------------------

chat.addEventListener("status", (e) => {
  const online = e.detail.online;
  $("status").textContent = online ? "online" : "offline: reconnecting…";
  $("status").classList.toggle("online", online);
  if (!online) {
    state.wasOffline = true;
  } else if (state.wasOffline && me()) {
    loadRooms().catch(() => {}); // unread counts as they are now
  }
});

chat.addEventListener("joined", (e) => {
  if (e.detail.room_id === state.current && state.wasOffline) {
    state.wasOffline = false;
    resync(e.detail);
  }
});

chat.addEventListener("signedout", reset);

chat.addEventListener("message", (e) => {
  const m = e.detail;
  const room = state.rooms.get(m.room_id);
  const mine = me() && m.author.id === me().id;
  if (room) {
    room.last_seq = Math.max(room.last_seq, m.seq);
    // Sending moves the sender's marker: one's own message is read.
    if (mine) room.last_read_seq = Math.max(room.last_read_seq, m.seq);
    room.unread = Math.max(0, room.last_seq - room.last_read_seq);
  }
  if (m.room_id === state.current) {
    show(m);
    markRead();
    // Its author has read up to it (sending moves the marker, unannounced).
    if (!mine) {
      state.receipts.set(m.author.id, { username: m.author.username, seq: m.seq });
      renderReceipts();
    }
  }
  renderRooms();
});

chat.addEventListener("message_updated", (e) => {
  const m = e.detail;
  const li = m.room_id === state.current && state.shown.get(m.seq);
  if (li) fill(li, m);
});

chat.addEventListener("typing", (e) => {
  const t = e.detail;
  if (t.room_id !== state.current) return;
  $("typing").textContent = `${t.user.username} is typing…`;
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(() => ($("typing").textContent = ""), 3000);
});

chat.addEventListener("read", (e) => {
  const r = e.detail;
  if (me() && r.user.id === me().id) return setMarker(r.room_id, r.last_read_seq);
  if (r.room_id !== state.current) return;
  state.receipts.set(r.user.id, { username: r.user.username, seq: r.last_read_seq });
  renderReceipts();
});

chat.addEventListener("presence", (e) => {
  const p = e.detail;
  if (p.room_id !== state.current) return;
  if (p.status === "online") state.online.set(p.user.id, p.user.username);
  else state.online.delete(p.user.id);
  renderPresence();
});

document.addEventListener("visibilitychange", markRead);

// ---- forms -------------------------------------------------------------------

$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn(false);
});
$("register").addEventListener("click", () => {
  if ($("auth-form").reportValidity()) signIn(true);
});
$("logout").addEventListener("click", async () => {
  try {
    await chat.logout();
  } catch {
    // Signed out here whatever the server said.
  }
  reset();
});

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("body").value;
  if (!text.trim() || state.current === null) return;
  $("body").value = "";
  showError("room-error", null);
  try {
    await chat.send(state.current, text);
  } catch (err) {
    if (!$("body").value) $("body").value = text; // unless something new was typed
    showError("room-error", err);
  }
});
$("body").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("body").addEventListener("input", () => {
  const now = Date.now();
  if (state.current !== null && now - state.lastTyping > 2000) {
    state.lastTyping = now;
    chat.typing(state.current);
  }
});

$("older").addEventListener("click", loadOlder);

$("all-rooms").addEventListener("change", async (e) => {
  state.all = e.target.checked;
  await loadRooms();
});

$("create-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const room = await chat.createRoom($("room-name").value.trim());
    $("room-name").value = "";
    state.all = false;
    $("all-rooms").checked = false;
    await loadRooms();
    await openRoom(room.id);
  } catch (err) {
    showError("room-error", err);
  }
});

$("member-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("member-name").value.trim();
  try {
    const user = (await chat.users(name, 5)).find((u) => u.username === name);
    if (!user) throw new Error(`no user named ${name}`);
    await chat.addMember(state.current, user.id);
    $("member-name").value = "";
    showError("room-error", null);
  } catch (err) {
    showError("room-error", err);
  }
});

$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const list = $("results");
  list.replaceChildren();
  try {
    const hits = await chat.search($("search").value);
    if (!hits.length) {
      const li = document.createElement("li");
      li.textContent = "No matches";
      list.append(li);
    }
    for (const m of hits) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      const where = document.createElement("strong");
      where.textContent = state.rooms.get(m.room_id)?.name ?? `Room ${m.room_id}`;
      const text = document.createElement("span");
      text.textContent = `${m.author.username}: ${m.body}`;
      b.append(where, text);
      b.addEventListener("click", () => openRoom(m.room_id));
      li.append(b);
      list.append(li);
    }
  } catch (err) {
    const li = document.createElement("li");
    li.className = "error";
    li.textContent = err.message;
    list.append(li);
  }
});

start();
