// What one user sees of every room: messages by id (each shown once, in seq order), and the sends not yet
// acked. No DOM here: chat.js renders rows(roomId) whenever changed() is called.
//
// A message can reach us several ways: history (REST), a live `message` event, the server's replay after a
// reconnect (Socket.IO connection state recovery), an `after_seq` catch-up. All are keyed by the message id,
// so seeing it twice changes nothing.
//
// Our own sends: a pending row, keyed by its clientMsgId, until the ack says which message it became. The
// server broadcasts a message before it acks it (server/chat.py), so our own broadcast arrives while the
// send is still pending: it is held back (unclaimed) while a pending send of the same room and content waits,
// and the ack then turns that pending row into the message. Nothing is ever on screen twice.

export class Timeline {
  constructor(me, changed = () => {}) {
    this.me = me;
    this.changed = changed;
    this.rooms = new Map(); // roomId -> Map(id -> message row)
    this.pending = new Map(); // clientMsgId -> {clientMsgId, roomId, content, status, error}
    this.unclaimed = new Map(); // id -> own message awaiting the ack of its pending send
  }

  room(roomId) {
    let rows = this.rooms.get(roomId);
    if (rows === undefined) {
      rows = new Map();
      this.rooms.set(roomId, rows);
    }
    return rows;
  }

  has(roomId, id) {
    return this.room(roomId).has(id) || this.unclaimed.has(id);
  }

  // A message from history or a live event; returns true when it is new.
  add(msg, { live = false } = {}) {
    const roomId = msg.roomId;
    if (!roomId || !msg.id || this.has(roomId, msg.id)) return false;
    if (live && msg.sender === this.me && this.#waiting(roomId, msg.content)) {
      this.unclaimed.set(msg.id, msg);
      return false;
    }
    this.#put(msg, msg.sender === this.me ? "sent" : "received");
    this.changed(roomId);
    return true;
  }

  addMany(roomId, messages) {
    let added = 0;
    for (const msg of messages) {
      if (this.add({ ...msg, roomId })) added += 1;
    }
    return added;
  }

  #put(msg, status) {
    this.room(msg.roomId).set(msg.id, {
      id: msg.id,
      seq: msg.seq,
      roomId: msg.roomId,
      sender: msg.sender,
      content: msg.content,
      timestamp: msg.timestamp,
      status,
      clientMsgId: msg.clientMsgId,
    });
  }

  #waiting(roomId, content) {
    for (const p of this.pending.values()) {
      if (p.roomId === roomId && p.content === content && p.status === "sending") return true;
    }
    return false;
  }

  // A send leaves: shown at once, as "sending".
  sending(clientMsgId, roomId, content) {
    const entry = this.pending.get(clientMsgId) || { clientMsgId, roomId, content };
    entry.status = "sending";
    entry.error = "";
    this.pending.set(clientMsgId, entry);
    this.changed(roomId);
    return entry;
  }

  // The server stored it: {ok: true, id, seq, timestamp}.
  acked(clientMsgId, ack) {
    const entry = this.pending.get(clientMsgId);
    if (entry === undefined) return;
    this.pending.delete(clientMsgId);
    const rows = this.room(entry.roomId);
    const existing = rows.get(ack.id);
    if (existing !== undefined) {
      existing.status = "sent";
      existing.clientMsgId = clientMsgId;
    } else {
      const held = this.unclaimed.get(ack.id);
      this.unclaimed.delete(ack.id);
      this.#put(
        {
          id: ack.id,
          seq: ack.seq,
          roomId: entry.roomId,
          sender: this.me,
          content: held ? held.content : entry.content,
          timestamp: ack.timestamp,
          clientMsgId,
        },
        "sent",
      );
    }
    this.#release(entry.roomId);
    this.changed(entry.roomId);
  }

  // Refused ({ok: false, error}) or no answer in time: shown as failed, with a retry.
  failed(clientMsgId, error) {
    const entry = this.pending.get(clientMsgId);
    if (entry === undefined) return;
    entry.status = "failed";
    entry.error = error;
    this.#release(entry.roomId);
    this.changed(entry.roomId);
  }

  // Own broadcasts no pending send waits for any more (sent from another tab, or acked late) are shown.
  #release(roomId) {
    for (const [id, msg] of this.unclaimed) {
      if (msg.roomId === roomId && !this.#waiting(roomId, msg.content)) {
        this.unclaimed.delete(id);
        this.#put(msg, "sent");
      }
    }
  }

  lastSeq(roomId) {
    let last = 0;
    for (const row of this.room(roomId).values()) last = Math.max(last, row.seq || 0);
    return last;
  }

  firstSeq(roomId) {
    let first = Infinity;
    for (const row of this.room(roomId).values()) first = Math.min(first, row.seq || Infinity);
    return first === Infinity ? 0 : first;
  }

  forget(roomId) {
    this.rooms.delete(roomId);
  }

  // Messages in seq order, then the sends not yet acked (oldest first).
  rows(roomId) {
    const stored = [...this.room(roomId).values()].sort((a, b) => a.seq - b.seq);
    const waiting = [...this.pending.values()].filter((p) => p.roomId === roomId);
    return [...stored, ...waiting.map((p) => ({ ...p, sender: this.me, pending: true }))];
  }
}
