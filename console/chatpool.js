// chatpool.js: the reference client of chatpool's HTTP API (SPEC §2, §5)
// and WebSocket protocol (SPEC §3), as one dependency-free ES module.
//
//   import { Chatpool } from "/console/chatpool.js";
//   const chat = new Chatpool();                 // same origin; or { baseUrl }
//   await chat.login("ann", "correct horse battery");
//   chat.addEventListener("message", (e) => show(e.detail));
//   chat.addEventListener("status", (e) => banner(e.detail.online));
//   chat.connect();
//   const page = await chat.history(7);          // show page.messages, then:
//   chat.join(7, page.last_seq);                 // live from there; resumed after a reconnect
//   const message = await chat.send(7, "hello"); // idempotent: one client_id, retried
//
// What it does for you:
// - HTTP calls throw ApiError with the SPEC's `code`, `status` and `retryAfter`.
// - One WebSocket, reconnected with exponential backoff (0.25 s doubling to
//   10 s, with jitter) after any close but a revoked token (1008, then
//   "signedout"). Every joined room is joined again with `after_seq` = the
//   last seq delivered, so nothing is missed and nothing comes twice; the
//   client also drops any seq it has already delivered.
// - `send` makes one `client_id` per message and retries it (same id, so
//   never stored twice) on db_busy, db_timeout, db_unavailable,
//   rate_limited, server_busy and shutting_down, and across reconnects,
//   until it is acked or `sendTimeoutMs` (60 s) passes. A frame unanswered
//   for 10 s closes the socket (presumed dead) and is retried after the
//   reconnect.
// - A token that stops working (logout elsewhere: close 1008; expired
//   while away: the upgrade refused) ends in "signedout", not a retry loop.
//
// Events (CustomEvent, payload in `detail`): "message" (a message object),
// "message_updated" (its new state), "typing" {room_id, user},
// "read" {room_id, user, last_read_seq}, "presence" {room_id, user, status},
// "joined" {room_id, last_seq, truncated}, "left" {room_id},
// "status" {online}, "signedout", "error" (an error frame without a caller).

/** An HTTP or WebSocket error in the SPEC's shape. */
export class ApiError extends Error {
  constructor(code, message, status = 0, retryAfter = null) {
    super(message || code);
    this.name = "ApiError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Codes worth retrying with the same `client_id`. */
export const RETRYABLE = new Set([
  "db_busy",
  "db_timeout",
  "db_unavailable",
  "rate_limited",
  "server_busy",
  "shutting_down",
]);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `ms` plus up to 20 % more, so clients that failed together retry apart. */
const jitter = (ms) => ms * (1 + Math.random() * 0.2);

/** How long a frame waits for its reply before the socket is presumed dead. */
const CALL_TIMEOUT_MS = 10000;

/**
 * A random UUID (v4) for `client_id`. `crypto.randomUUID` exists only in
 * secure contexts (https, localhost); plain http elsewhere gets one built
 * from `crypto.getRandomValues`, which exists everywhere.
 */
export function newClientId() {
  if (globalThis.crypto?.randomUUID) {
    try {
      return crypto.randomUUID();
    } catch {
      // Not a secure context: fall through.
    }
  }
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class Chatpool extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] the server (default: this page's origin)
   * @param {string} [options.token] a bearer token from an earlier login
   * @param {number} [options.sendTimeoutMs] how long `send` keeps retrying
   */
  constructor({ baseUrl, token = null, sendTimeoutMs = 60000 } = {}) {
    super();
    this.baseUrl = (baseUrl || globalThis.location?.origin || "").replace(/\/$/, "");
    this.token = token;
    this.user = null;
    this.sendTimeoutMs = sendTimeoutMs;
    this.ws = null;
    this.online = false;
    this.wanted = false; // connect() called and not closed since
    this.backoffMs = 250;
    this.joined = new Map(); // room id → last seq delivered (0: none yet)
    this.pending = new Map(); // ref → {resolve, reject}
    this.nextRef = 1;
    this.waitingForOpen = [];
  }

  // ---- HTTP ------------------------------------------------------------

  /** Any call: the parsed JSON (null for 204), or an ApiError. */
  async request(method, path, body) {
    const headers = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError("network", `cannot reach the server: ${e.message}`);
    }
    if (response.status === 204) return null;
    const json = await response.json().catch(() => null);
    if (!response.ok) {
      const error = json?.error ?? { code: "internal", message: response.statusText };
      const retry = response.headers.get("retry-after");
      throw new ApiError(error.code, error.message, response.status, retry && Number(retry));
    }
    return json;
  }

  async register(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    return this.#signedIn(await this.request("POST", "/api/auth/register", body));
  }

  async login(username, password) {
    return this.#signedIn(await this.request("POST", "/api/auth/login", { username, password }));
  }

  #signedIn({ token, user }) {
    this.token = token;
    this.user = user;
    return user;
  }

  /** Logs out (this token only); the socket is closed by the server with 1008. */
  async logout() {
    try {
      await this.request("POST", "/api/auth/logout");
    } finally {
      this.close();
      this.token = null;
      this.user = null;
    }
  }

  async me() {
    this.user = await this.request("GET", "/api/me");
    return this.user;
  }

  users(prefix = "", limit = 20) {
    const q = new URLSearchParams({ prefix, limit });
    return this.request("GET", `/api/users?${q}`).then((r) => r.users);
  }

  /** The caller's rooms, or with `all` every room (agents and admins). */
  rooms({ all = false } = {}) {
    return this.request("GET", all ? "/api/rooms?scope=all" : "/api/rooms").then((r) => r.rooms);
  }

  room(id) {
    return this.request("GET", `/api/rooms/${id}`);
  }

  createRoom(name, memberIds = []) {
    return this.request("POST", "/api/rooms", { name, member_ids: memberIds });
  }

  addMember(roomId, userId) {
    return this.request("POST", `/api/rooms/${roomId}/members`, { user_id: userId });
  }

  /** A page of history: {messages (ascending), has_more, last_seq}. */
  history(roomId, { beforeSeq, afterSeq, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit });
    if (beforeSeq !== undefined) q.set("before_seq", beforeSeq);
    if (afterSeq !== undefined) q.set("after_seq", afterSeq);
    return this.request("GET", `/api/rooms/${roomId}/messages?${q}`);
  }

  edit(roomId, seq, body) {
    return this.request("PATCH", `/api/rooms/${roomId}/messages/${seq}`, { body });
  }

  remove(roomId, seq) {
    return this.request("DELETE", `/api/rooms/${roomId}/messages/${seq}`);
  }

  /** Moves the read marker over HTTP (the socket's `read` does the same). */
  markRead(roomId, seq) {
    return this.request("POST", `/api/rooms/${roomId}/read`, { seq });
  }

  presence(roomId) {
    return this.request("GET", `/api/rooms/${roomId}/presence`).then((r) => r.online);
  }

  search(q, { roomId, limit = 20 } = {}) {
    const params = new URLSearchParams({ q, limit });
    if (roomId !== undefined) params.set("room_id", roomId);
    return this.request("GET", `/api/search?${params}`).then((r) => r.messages);
  }

  // ---- WebSocket ---------------------------------------------------------

  /** Opens the socket and keeps it open (reconnecting) until `close()`. */
  connect() {
    this.wanted = true;
    if (!this.ws) this.#open();
  }

  /** Closes the socket for good (no reconnect) and forgets the joined rooms. */
  close() {
    this.wanted = false;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.#failPending();
    this.joined.clear();
    this.#setOnline(false);
  }

  #failPending() {
    for (const { reject } of this.pending.values()) {
      reject(new ApiError("disconnected", "the connection closed"));
    }
    this.pending.clear();
  }

  /**
   * Joins a room: now if connected, and again after every reconnect, each
   * time from the last seq delivered. Give `afterSeq` (the `last_seq` of the
   * history page you showed) to get everything after it, so nothing falls
   * between the page and the live messages.
   */
  join(roomId, afterSeq = null) {
    const known = this.joined.get(roomId);
    this.joined.set(roomId, known ?? afterSeq);
    if (this.online) this.#sendJoin(roomId);
  }

  leave(roomId) {
    this.joined.delete(roomId);
    // With a ref, so its `left` reply is told apart from a `left` the server
    // sends unasked (access lost), which alone forgets the room.
    if (this.online) this.#frame({ type: "leave", room_id: roomId, ref: `leave-${this.nextRef++}` });
  }

  typing(roomId) {
    if (this.online) this.#frame({ type: "typing", room_id: roomId });
  }

  /** Moves the read marker; resolves with the marker. */
  read(roomId, seq) {
    return this.#call({ type: "read", room_id: roomId, seq }).then((r) => r.last_read_seq);
  }

  /**
   * Sends a message exactly once: one `client_id`, retried on the retryable
   * codes and across reconnects, over the socket (HTTP when not connected).
   * Resolves with the stored message.
   */
  async send(roomId, body, clientId = newClientId()) {
    const deadline = Date.now() + this.sendTimeoutMs;
    let pause = 250;
    for (;;) {
      try {
        if (this.online) {
          const ack = await this.#call({ type: "send", room_id: roomId, body, client_id: clientId });
          return ack.message;
        }
        return await this.request("POST", `/api/rooms/${roomId}/messages`, { body, client_id: clientId });
      } catch (e) {
        const again =
          e instanceof ApiError &&
          (RETRYABLE.has(e.code) || e.code === "network" || e.code === "disconnected" || e.code === "timeout");
        if (!again || Date.now() + pause > deadline) throw e;
        await sleep(jitter(e.retryAfter ? e.retryAfter * 1000 : pause));
        pause = Math.min(pause * 2, 5000);
      }
    }
  }

  #open() {
    const url = new URL(this.baseUrl || location.origin);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.pathname = "/ws";
    url.search = `?token=${encodeURIComponent(this.token)}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    this.greeted = false;
    ws.onmessage = (e) => this.#onFrame(JSON.parse(e.data));
    ws.onclose = (e) => this.#onClose(ws, e.code);
  }

  async #onClose(ws, code) {
    if (this.ws !== ws) return;
    const greeted = this.greeted;
    this.ws = null;
    this.#setOnline(false);
    this.#failPending();
    if (code === 1008) return this.#signedOut();
    if (!this.wanted) return;
    // A refused upgrade (a token gone bad while away: HTTP 401) closes
    // before `hello` with 1006 like any network failure: ask.
    if (!greeted) {
      try {
        await this.request("GET", "/api/me");
      } catch (e) {
        if (e.status === 401) return this.#signedOut();
      }
    }
    const pause = jitter(this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, 10000);
    setTimeout(() => {
      if (this.wanted && !this.ws) this.#open();
    }, pause);
  }

  #signedOut() {
    this.wanted = false;
    this.joined.clear();
    this.dispatchEvent(new CustomEvent("signedout"));
  }

  #setOnline(online) {
    if (this.online === online) return;
    this.online = online;
    this.dispatchEvent(new CustomEvent("status", { detail: { online } }));
  }

  #sendJoin(roomId) {
    const last = this.joined.get(roomId);
    const frame = { type: "join", room_id: roomId };
    if (last !== null && last !== undefined) frame.after_seq = last;
    this.#frame(frame);
  }

  #frame(frame) {
    this.ws?.send(JSON.stringify(frame));
  }

  /** A frame whose reply (or error) comes back with its `ref`. */
  #call(frame) {
    if (!this.online) return Promise.reject(new ApiError("disconnected", "not connected"));
    const ref = String(this.nextRef++);
    const ws = this.ws;
    return new Promise((resolve, reject) => {
      // No answer in time: the socket is presumed dead (a half-open
      // connection) and closed, which reconnects; the caller may retry.
      const timer = setTimeout(() => {
        if (!this.pending.delete(ref)) return;
        reject(new ApiError("timeout", "no answer from the server"));
        if (this.ws === ws) ws.close(4000, "no answer");
      }, CALL_TIMEOUT_MS);
      const settle = (f) => (value) => {
        clearTimeout(timer);
        f(value);
      };
      this.pending.set(ref, { resolve: settle(resolve), reject: settle(reject) });
      this.#frame({ ...frame, ref });
    });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #onFrame(f) {
    const waiting = f.ref !== undefined && this.pending.get(f.ref);
    if (waiting) this.pending.delete(f.ref);
    switch (f.type) {
      case "hello":
        this.user = f.user;
        this.greeted = true;
        this.backoffMs = 250;
        this.#setOnline(true);
        for (const roomId of this.joined.keys()) this.#sendJoin(roomId);
        break;
      case "joined":
        if (this.joined.get(f.room_id) === null) this.joined.set(f.room_id, f.last_seq);
        this.#emit("joined", f);
        break;
      case "left":
        if (f.ref === undefined) this.joined.delete(f.room_id);
        this.#emit("left", f);
        break;
      case "message": {
        const m = f.message;
        const last = this.joined.get(m.room_id);
        if (last !== undefined && last !== null && m.seq <= last) break;
        if (this.joined.has(m.room_id)) this.joined.set(m.room_id, m.seq);
        this.#emit("message", m);
        break;
      }
      case "ack":
        waiting?.resolve(f);
        break;
      case "read":
        if (waiting) waiting.resolve(f);
        this.#emit("read", f);
        break;
      case "message_updated":
        this.#emit("message_updated", f.message);
        break;
      case "typing":
      case "presence":
        this.#emit(f.type, f);
        break;
      case "error": {
        const error = new ApiError(f.code, f.message);
        if (waiting) waiting.reject(error);
        else this.#emit("error", error);
        break;
      }
      case "pong":
        waiting?.resolve(f);
        break;
      default:
        break;
    }
  }
}
