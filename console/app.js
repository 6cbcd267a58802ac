// The console: a small single-page UI on chatpool.js (the reference client).
// Plain ES modules, no build step; every text goes in through textContent.

import { Chatpool } from "/console/chatpool.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "chatpool.token";

const chat = new Chatpool({ token: sessionStorage.getItem(TOKEN_KEY) });
const state = {
  rooms: new Map(), // id → room object (with last_read_seq, unread)
  all: false, // the all-rooms view (agents and admins)
  mine: new Set(), // ids of the caller's own rooms (joined for live unread counts)
  current: null, // the open room's id
  shown: new Map(), // seq → <li> of the open room
  oldest: null, // lowest seq shown
  newest: 0, // highest seq shown
  receipts: new Map(), // user id → {username, seq}, others' markers in the open room
  online: new Map(), // user id → username, in the open room
  typingTimer: null,
  lastTyping: 0,
};

function me() {
  return chat.user;
}

function staff() {
  return me() && (me().role === "agent" || me().role === "admin");
}

function showError(id, e) {
  $(id).textContent = e ? e.message || String(e) : "";
}

// ---- signing in ------------------------------------------------------------

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

// ---- rooms -----------------------------------------------------------------

async function loadRooms() {
  const rooms = await chat.rooms({ all: state.all });
  state.rooms = new Map(rooms.map((r) => [r.id, r]));
  // Joined for live unread counts: every room of the caller's own; in the
  // all-rooms view only the open one.
  if (!state.all) {
    state.mine = new Set(rooms.map((r) => r.id));
    for (const r of rooms) chat.join(r.id, r.last_seq);
  }
  renderRooms();
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const r of state.rooms.values()) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.room = r.id;
    if (r.id === state.current) button.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.textContent = r.name;
    button.append(name);
    if (r.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = String(r.unread);
      badge.setAttribute("aria-label", `${r.unread} unread`);
      button.append(badge);
    }
    button.addEventListener("click", () => openRoom(r.id));
    li.append(button);
    list.append(li);
  }
}

async function openRoom(id) {
  const previous = state.current;
  if (previous !== null && previous !== id && state.all && !isMine(previous)) chat.leave(previous);
  state.current = id;
  state.shown.clear();
  state.receipts.clear();
  state.online.clear();
  state.oldest = null;
  state.newest = 0;
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("receipts").textContent = "";
  showError("room-error", null);
  const room = state.rooms.get(id);
  $("room").hidden = false;
  $("room-title").textContent = room ? room.name : `Room ${id}`;
  renderRooms();
  try {
    const page = await chat.history(id);
    if (state.current !== id) return;
    for (const m of page.messages) append(m);
    state.oldest = page.messages.length ? page.messages[0].seq : null;
    $("older").hidden = !page.has_more;
    chat.join(id, page.last_seq);
    for (const u of await chat.presence(id)) state.online.set(u.id, u.username);
    renderPresence();
    markRead();
    $("body").focus();
  } catch (e) {
    showError("room-error", e);
  }
}

function isMine(id) {
  return state.mine.has(id);
}

async function loadOlder() {
  const id = state.current;
  if (id === null || state.oldest === null) return;
  try {
    const page = await chat.history(id, { beforeSeq: state.oldest });
    if (state.current !== id) return;
    const list = $("messages");
    const first = list.firstChild;
    for (const m of page.messages) {
      if (!state.shown.has(m.seq)) list.insertBefore(render(m), first);
    }
    if (page.messages.length) state.oldest = page.messages[0].seq;
    $("older").hidden = !page.has_more;
  } catch (e) {
    showError("room-error", e);
  }
}

// ---- messages ----------------------------------------------------------------

function render(m) {
  const li = document.createElement("li");
  li.dataset.seq = m.seq;
  fill(li, m);
  state.shown.set(m.seq, li);
  return li;
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
  if (mine) li.append(action("Edit", () => startEdit(li, m)));
  if (mine || staff()) li.append(action("Delete", () => remove(m)));
}

function action(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "quiet";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function append(m) {
  if (state.shown.has(m.seq)) return;
  $("messages").append(render(m));
  state.newest = Math.max(state.newest, m.seq);
  if (state.oldest === null) state.oldest = m.seq;
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function startEdit(li, m) {
  const form = document.createElement("form");
  form.className = "row";
  const label = document.createElement("label");
  label.textContent = "Edit message ";
  const input = document.createElement("input");
  input.value = m.body;
  input.required = true;
  input.maxLength = 4000;
  label.append(input);
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  form.append(label, save, action("Cancel", () => fill(li, m)));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const edited = await chat.edit(m.room_id, m.seq, input.value);
      fill(li, edited);
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

/** Moves the marker to the newest message shown, if it is further. */
async function markRead() {
  const id = state.current;
  const room = state.rooms.get(id);
  if (id === null || state.newest === 0 || document.hidden) return;
  if (room && room.last_read_seq >= state.newest) return;
  try {
    const seq = chat.online ? await chat.read(id, state.newest) : (await chat.markRead(id, state.newest)).last_read_seq;
    setMarker(id, seq);
  } catch {
    // Not worth a message: the next one moves it.
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
});

chat.addEventListener("signedout", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showAuth();
});

chat.addEventListener("message", (e) => {
  const m = e.detail;
  const room = state.rooms.get(m.room_id);
  if (room) room.last_seq = Math.max(room.last_seq, m.seq);
  if (m.room_id === state.current) {
    append(m);
    markRead();
    // Its author has read up to it (sending moves the marker, unannounced).
    if (!me() || m.author.id !== me().id) {
      state.receipts.set(m.author.id, { username: m.author.username, seq: m.seq });
      renderReceipts();
    }
  } else if (room && (!me() || m.author.id !== me().id)) {
    room.unread = room.last_seq - room.last_read_seq;
  } else if (room) {
    room.last_read_seq = Math.max(room.last_read_seq, m.seq);
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
  } finally {
    sessionStorage.removeItem(TOKEN_KEY);
    state.current = null;
    $("room").hidden = true;
    showAuth();
  }
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
    $("body").value = text;
    showError("room-error", err);
  }
});
$("body").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
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
