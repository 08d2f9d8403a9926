// The chat at /: plain ES modules, the vendored Socket.IO client, the public REST API and the contract's events.
import { io } from "/web/vendor/socket.io.esm.min.js";
import { Api } from "/web/api.js";
import { Timeline } from "/web/timeline.js";

const ACK_TIMEOUT_MS = 20000; // a durable commit may wait out a short storage outage before it is acked
const PAGE = 100;
const CATCH_UP_PAGE = 500;
const CATCH_UP_MAX_PAGES = 200;

const $ = (id) => document.getElementById(id);
const el = {
  authView: $("auth-view"),
  authForm: $("auth-form"),
  authUser: $("auth-username"),
  authPassword: $("auth-password"),
  authStatus: $("auth-status"),
  appView: $("app-view"),
  conn: $("conn"),
  whoami: $("whoami"),
  logout: $("logout"),
  roomsPane: $("rooms-pane"),
  roomList: $("room-list"),
  refreshRooms: $("refresh-rooms"),
  createForm: $("create-form"),
  roomName: $("room-name"),
  roomParticipants: $("room-participants"),
  createStatus: $("create-status"),
  roomPane: $("room-pane"),
  roomTitle: $("room-title"),
  roomMembers: $("room-members"),
  roomCreated: $("room-created"),
  back: $("back"),
  leave: $("leave"),
  older: $("older"),
  messages: $("messages"),
  sendForm: $("send-form"),
  messageInput: $("message-input"),
  inviteForm: $("invite-form"),
  inviteNames: $("invite-names"),
  roomStatus: $("room-status"),
};

const state = {
  token: localStorage.getItem("token"),
  username: localStorage.getItem("username"),
  api: null,
  socket: null,
  everConnected: false,
  rooms: [],
  roomId: null,
  unread: new Map(),
  timeline: null,
  historyLoaded: null, // the open room, once its newest history page is in
  rendered: new Map(), // row key -> <li>, for the open room
  renderQueued: false,
};

// ---------------------------------------------------------------------------------------------- helpers

function names(text) {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function newClientMsgId() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts (localhost, https)
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function formatTime(iso, withDate = false) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return withDate ? date.toLocaleString() : date.toLocaleTimeString();
}

function say(node, text, kind = "") {
  node.textContent = text;
  node.dataset.kind = kind;
}

function roomById(roomId) {
  return state.rooms.find((r) => r.roomId === roomId);
}

// ---------------------------------------------------------------------------------------------- auth

function showAuth(message = "") {
  el.authView.hidden = false;
  el.appView.hidden = true;
  el.logout.hidden = true;
  el.whoami.hidden = true;
  say(el.authStatus, message, message ? "error" : "");
  setConn("offline", "Not connected");
  el.authUser.focus();
}

el.authForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const action = event.submitter && event.submitter.value === "signup" ? "signup" : "login";
  const username = el.authUser.value;
  const password = el.authPassword.value;
  if (!username.trim() || !password.trim()) {
    say(el.authStatus, "Enter a username and a password.", "error");
    return;
  }
  const api = new Api();
  try {
    if (action === "signup") {
      say(el.authStatus, "Creating your account…");
      await api.signup(username, password);
    }
    say(el.authStatus, "Logging in…");
    const { token, username: who } = await api.login(username, password);
    localStorage.setItem("token", token);
    localStorage.setItem("username", who);
    el.authPassword.value = "";
    say(el.authStatus, "");
    start(token, who);
  } catch (error) {
    say(el.authStatus, error.message, "error");
  }
});

function logout(message = "") {
  if (state.socket) {
    state.socket.removeAllListeners();
    state.socket.disconnect();
  }
  localStorage.removeItem("token");
  localStorage.removeItem("username");
  Object.assign(state, { token: null, username: null, socket: null, rooms: [], roomId: null, everConnected: false });
  state.unread.clear();
  state.rendered.clear();
  el.messages.replaceChildren();
  el.roomList.replaceChildren();
  if (location.hash) history.replaceState(null, "", location.pathname);
  showAuth(message);
}

el.logout.addEventListener("click", () => logout());

// ---------------------------------------------------------------------------------------------- session

function start(token, username) {
  state.token = token;
  state.username = username;
  state.api = new Api(token, () => logout("Your session has expired: log in again."));
  state.timeline = new Timeline(username, (roomId) => {
    if (roomId === state.roomId) scheduleRender();
  });
  el.authView.hidden = true;
  el.appView.hidden = false;
  el.logout.hidden = false;
  el.whoami.hidden = false;
  el.whoami.textContent = `Signed in as ${username}`;
  connect();
  route();
}

function setConn(kind, text) {
  el.conn.dataset.state = kind;
  el.conn.textContent = text;
}

function updateConn() {
  const socket = state.socket;
  if (socket && socket.connected) {
    const transport = socket.io.engine ? socket.io.engine.transport.name : "";
    el.conn.dataset.transport = transport;
    setConn("online", `Connected (${transport})`);
  }
}

function connect() {
  // Same origin, default path /socket.io/, the token in the query (contract §2): as the original frontend.
  const socket = io({ query: { token: state.token } });
  state.socket = socket;
  window.minitalkSocket = socket; // for people debugging in the console (and the browser tests)
  socket.io.on("open", () => {
    socket.io.engine.on("upgrade", updateConn);
  });
  socket.on("connect", () => {
    updateConn();
    const again = state.everConnected;
    state.everConnected = true;
    if (state.roomId) socket.emit("join_room", { roomId: state.roomId });
    // Recovered: the server replays what we missed (connection state recovery). Otherwise: catch up by hand.
    if (again && !socket.recovered) catchUp().catch((error) => say(el.roomStatus, `Could not catch up: ${error.message}`, "error"));
  });
  socket.on("disconnect", (reason) => {
    setConn("offline", "Offline: reconnecting…");
    if (reason === "io server disconnect") setTimeout(() => socket.connect(), 1000);
  });
  socket.on("connect_error", (error) => {
    if (error.message === "Authentication error") {
      logout("Your session has expired: log in again.");
      return;
    }
    setConn("offline", "Cannot reach the server: retrying…");
  });
  socket.on("message", (msg) => {
    if (!msg || !msg.roomId) return;
    const added = state.timeline.add(msg, { live: true });
    if (added && msg.roomId !== state.roomId) {
      state.unread.set(msg.roomId, (state.unread.get(msg.roomId) || 0) + 1);
      renderRooms();
    }
  });
  // A join may reach the server after the history read (two connections): what was committed in between is
  // read once the join is confirmed, so nothing falls into that gap.
  socket.on("joined_room", (payload) => {
    const roomId = payload && payload.roomId;
    if (roomId && roomId === state.roomId && state.historyLoaded === roomId) {
      pageAfter(roomId, state.timeline.lastSeq(roomId)).catch(() => {});
    }
  });
  socket.on("error", (payload) => {
    if (payload && payload.message && state.roomId) say(el.roomStatus, payload.message, "error");
  });
}

async function catchUp() {
  for (const roomId of [...state.timeline.rooms.keys()]) {
    if (roomId !== state.roomId) state.timeline.forget(roomId); // read afresh when opened
  }
  if (state.roomId) await pageAfter(state.roomId, state.timeline.lastSeq(state.roomId));
}

async function pageAfter(roomId, after) {
  for (let i = 0; i < CATCH_UP_MAX_PAGES; i += 1) {
    const page = await state.api.history(roomId, { after_seq: String(after), limit: String(CATCH_UP_PAGE) });
    state.timeline.addMany(roomId, page);
    if (page.length < CATCH_UP_PAGE) return;
    after = page[page.length - 1].seq;
  }
}

// ---------------------------------------------------------------------------------------------- rooms

async function loadRooms() {
  try {
    state.rooms = await state.api.rooms();
    renderRooms();
  } catch (error) {
    say(el.createStatus, `Failed to load the room list: ${error.message}`, "error");
  }
}

function renderRooms() {
  const items = state.rooms.map((room) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "room";
    button.dataset.roomId = room.roomId;
    if (room.roomId === state.roomId) button.setAttribute("aria-current", "true");
    const title = document.createElement("span");
    title.className = "room-name";
    title.textContent = room.name;
    const unread = state.unread.get(room.roomId) || 0;
    if (unread > 0) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = String(unread);
      badge.setAttribute("aria-label", `${unread} unread`);
      title.append(" ", badge);
    }
    const members = document.createElement("span");
    members.className = "room-meta";
    members.textContent = `${room.participants.length} members: ${room.participants.join(", ")}`;
    const created = document.createElement("span");
    created.className = "room-meta";
    created.textContent = `Created by ${room.createdBy || "?"} · ${formatTime(room.createdAt, true)}`;
    button.append(title, members, created);
    button.addEventListener("click", () => {
      location.hash = `#/room/${encodeURIComponent(room.roomId)}`;
    });
    li.append(button);
    return li;
  });
  if (items.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No rooms yet: create one below.";
    items.push(li);
  }
  el.roomList.replaceChildren(...items);
}

el.refreshRooms.addEventListener("click", loadRooms);

el.createForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = el.roomName.value.trim();
  if (!name) {
    say(el.createStatus, "Give the room a name.", "error");
    return;
  }
  const participants = names(el.roomParticipants.value).filter((n) => n !== state.username);
  try {
    const room = await state.api.createRoom(name, participants);
    el.roomName.value = "";
    el.roomParticipants.value = "";
    say(el.createStatus, `Created ${room.name}.`);
    await loadRooms();
    location.hash = `#/room/${encodeURIComponent(room.roomId)}`;
  } catch (error) {
    say(el.createStatus, error.message, "error");
  }
});

// ---------------------------------------------------------------------------------------------- one room

function route() {
  const match = location.hash.match(/^#\/room\/(.+)$/);
  if (match) openRoom(decodeURIComponent(match[1]));
  else closeRoom();
}

window.addEventListener("hashchange", () => {
  if (state.token) route();
});

function closeRoom() {
  const was = state.roomId;
  state.roomId = null;
  document.body.classList.remove("in-room");
  el.roomPane.hidden = true;
  state.rendered.clear();
  el.messages.replaceChildren();
  loadRooms().then(() => {
    const button = was && el.roomList.querySelector(`[data-room-id="${CSS.escape(was)}"]`);
    if (button) button.focus();
  });
}

async function openRoom(roomId) {
  state.roomId = roomId;
  state.unread.delete(roomId);
  state.rendered.clear();
  el.messages.replaceChildren();
  say(el.roomStatus, "");
  document.body.classList.add("in-room");
  el.roomPane.hidden = false;
  el.older.hidden = true;
  if (!roomById(roomId)) await loadRooms();
  if (state.roomId !== roomId) return;
  const room = roomById(roomId);
  if (!room) {
    el.roomTitle.textContent = "Chat room not found.";
    el.roomMembers.textContent = "";
    el.roomCreated.textContent = "";
    return;
  }
  renderRooms();
  renderRoomHead(room);
  if (state.socket && state.socket.connected) state.socket.emit("join_room", { roomId });
  state.timeline.forget(roomId); // the newest page from the log, then live (pending sends are kept)
  state.historyLoaded = null;
  try {
    const page = await state.api.history(roomId, { limit: String(PAGE) });
    if (state.roomId !== roomId) return;
    state.timeline.addMany(roomId, page);
    state.historyLoaded = roomId;
    el.older.hidden = page.length < PAGE;
  } catch (error) {
    say(el.roomStatus, `Failed to load messages: ${error.message}`, "error");
  }
  scheduleRender();
  el.messageInput.focus();
}

function renderRoomHead(room) {
  el.roomTitle.textContent = room.name;
  el.roomMembers.textContent = `Members: ${room.participants.join(", ")}`;
  el.roomCreated.textContent = `Created by ${room.createdBy || "?"} · ${formatTime(room.createdAt, true)}`;
}

el.back.addEventListener("click", () => {
  location.hash = "#/rooms";
});

el.older.addEventListener("click", async () => {
  const roomId = state.roomId;
  const first = state.timeline.firstSeq(roomId);
  try {
    const page = await state.api.history(roomId, { before_seq: String(first), limit: String(PAGE) });
    const scroller = el.messages;
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    state.timeline.addMany(roomId, page);
    el.older.hidden = page.length < PAGE;
    render();
    scroller.scrollTop = scroller.scrollHeight - fromBottom;
  } catch (error) {
    say(el.roomStatus, error.message, "error");
  }
});

el.sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = el.messageInput.value.trim();
  if (!content || !state.roomId) return;
  el.messageInput.value = "";
  send(state.timeline.sending(newClientMsgId(), state.roomId, content));
});

function send(entry) {
  state.timeline.sending(entry.clientMsgId, entry.roomId, entry.content);
  // Buffered by the client while disconnected, sent on reconnect; a retry reuses the clientMsgId, so the
  // server answers a repeat of a stored message with the original's ack (contract §8), never a second copy.
  state.socket
    .timeout(ACK_TIMEOUT_MS)
    .emit(
      "send_message",
      { roomId: entry.roomId, content: entry.content, clientMsgId: entry.clientMsgId },
      (timedOut, ack) => {
        if (timedOut) state.timeline.failed(entry.clientMsgId, "No answer from the server");
        else if (ack && ack.ok) state.timeline.acked(entry.clientMsgId, ack);
        else state.timeline.failed(entry.clientMsgId, (ack && ack.error) || "Failed to send message");
      },
    );
}

el.inviteForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const invited = names(el.inviteNames.value);
  if (invited.length === 0 || !state.roomId) return;
  try {
    const { participants } = await state.api.invite(state.roomId, invited);
    const room = roomById(state.roomId);
    if (room) {
      room.participants = participants;
      renderRoomHead(room);
      renderRooms();
    }
    el.inviteNames.value = "";
    say(el.roomStatus, `Invited ${invited.join(", ")}.`);
  } catch (error) {
    say(el.roomStatus, error.message, "error");
  }
});

el.leave.addEventListener("click", async () => {
  const roomId = state.roomId;
  const room = roomById(roomId);
  try {
    await state.api.leave(roomId);
    if (state.socket) state.socket.emit("leave_room", { roomId });
    state.timeline.forget(roomId);
    say(el.createStatus, `You left ${room ? room.name : "the room"}.`);
    location.hash = "#/rooms";
  } catch (error) {
    say(el.roomStatus, error.message, "error");
  }
});

// ---------------------------------------------------------------------------------------------- messages

function scheduleRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  queueMicrotask(() => {
    state.renderQueued = false;
    render();
  });
}

function rowKey(row) {
  // A send keeps its element from "sending" to "sent": screen readers announce it once (aria-live additions).
  return row.clientMsgId ? `c:${row.clientMsgId}` : `m:${row.id}`;
}

function statusText(row) {
  if (row.status === "sending") return "Sending…";
  if (row.status === "failed") return `Failed: ${row.error}`;
  return "Sent";
}

function buildRow(row) {
  const li = document.createElement("li");
  li.className = row.sender === state.username ? "msg mine" : "msg";
  const meta = document.createElement("div");
  meta.className = "meta";
  const sender = document.createElement("span");
  sender.className = "sender";
  sender.textContent = row.sender;
  const time = document.createElement("time");
  meta.append(sender, " ", time);
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = row.content;
  li.append(meta, content);
  if (row.sender === state.username) {
    const status = document.createElement("div");
    status.className = "status";
    li.append(status);
  }
  return li;
}

function updateRow(li, row) {
  li.dataset.status = row.status;
  if (row.id) li.dataset.id = row.id;
  if (row.seq) li.dataset.seq = String(row.seq);
  if (row.clientMsgId) li.dataset.clientMsgId = row.clientMsgId;
  const time = li.querySelector("time");
  if (row.timestamp && time.dateTime !== row.timestamp) {
    time.dateTime = row.timestamp;
    time.textContent = formatTime(row.timestamp);
  }
  const status = li.querySelector(".status");
  if (status) {
    const text = statusText(row);
    if (status.dataset.text !== text) {
      status.dataset.text = text;
      status.textContent = text;
      if (row.status === "failed") {
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "retry";
        retry.textContent = "Retry";
        retry.setAttribute("aria-label", `Retry sending: ${row.content}`);
        retry.addEventListener("click", () => send(row));
        status.append(" ", retry);
      }
    }
  }
}

function render() {
  const roomId = state.roomId;
  if (!roomId || !state.timeline) return;
  const list = el.messages;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const rows = state.timeline.rows(roomId);
  const keep = new Set();
  let previous = null;
  for (const row of rows) {
    const key = rowKey(row);
    keep.add(key);
    let li = state.rendered.get(key);
    if (li === undefined) {
      li = buildRow(row);
      state.rendered.set(key, li);
    }
    updateRow(li, row);
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (expected !== li) list.insertBefore(li, expected);
    previous = li;
  }
  for (const [key, li] of state.rendered) {
    if (!keep.has(key)) {
      li.remove();
      state.rendered.delete(key);
    }
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------------------------------------- start

if (state.token && state.username) start(state.token, state.username);
else showAuth();
