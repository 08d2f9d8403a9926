// Peer (b): MinitalkChat's chat events on Node's socket.io 4.8 (the original's library), the idiomatic way.
// In-memory users and rooms, nothing persisted. Only what the benchmark uses: REST signup-batch, login-batch,
// POST /api/chatrooms-batch and /health; Socket.IO auth by ?token=, auto-join on connect, join_room, leave_room,
// send_message (membership check, io.to(room) broadcast including the sender, ack when asked).
// Usage: node server.js  (PORT=0 picks a free port; the chosen port is printed as "listening on <port>")
const http = require("http");
const express = require("express");
const jwt = require("jsonwebtoken");
const { Server } = require("socket.io");

const SECRET = process.env.JWT_SECRET || "your-secret-key-for-the-benchmark-peer";
const users = new Map();
const rooms = new Map();
const roomsOf = new Map();

const app = express();
app.use(express.json({ limit: "10mb" }));
app.get("/health", (req, res) => res.json({ status: "OK" }));
app.post("/api/auth/signup-batch", (req, res) => {
  const created = [];
  for (const u of req.body.users) {
    if (!users.has(u.username)) {
      users.set(u.username, u.password);
      created.push({ username: u.username, id: u.username });
    }
  }
  res.status(201).json({ created, errors: [] });
});
app.post("/api/auth/login-batch", (req, res) => {
  const results = req.body.users
    .filter((u) => users.get(u.username) === u.password)
    .map((u) => ({ username: u.username, token: jwt.sign({ username: u.username }, SECRET) }));
  res.json({ results, errors: [] });
});
function createRoom(creator, name, others) {
  const participants = [...new Set([creator, ...(others || [])])];
  const roomId = require("crypto").randomUUID();
  rooms.set(roomId, { roomId, name, participants: new Set(participants) });
  for (const member of participants) {
    if (!roomsOf.has(member)) roomsOf.set(member, new Set());
    roomsOf.get(member).add(roomId);
  }
  return { roomId, name, participants };
}
app.post("/api/chatrooms-batch", (req, res) => {
  const creator = jwt.verify((req.headers.authorization || "").split(" ")[1], SECRET).username;
  const created = req.body.rooms.map((room) => createRoom(creator, room.name, room.participants));
  res.status(201).json({ message: `${created.length} rooms created`, created, errors: [] });
});

const server = http.createServer(app);
const io = new Server(server, { cors: { origin: "*" }, perMessageDeflate: false, httpCompression: false,
                                maxHttpBufferSize: 1e8, pingInterval: 25000, pingTimeout: 60000 });
io.use((socket, next) => {
  try {
    socket.username = jwt.verify(socket.handshake.query.token, SECRET).username;
    next();
  } catch (e) {
    next(new Error("Authentication error"));
  }
});
io.on("connection", (socket) => {
  for (const roomId of roomsOf.get(socket.username) || []) socket.join(roomId);
  socket.on("send_message", (data, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    if (!data || !data.roomId || !data.content) {
      socket.emit("error", { message: "roomId and content are required" });
      return reply({ ok: false, error: "roomId and content are required" });
    }
    const room = rooms.get(data.roomId);
    if (!room || !room.participants.has(socket.username)) {
      socket.emit("error", { message: "You are not a member of this chat room" });
      return reply({ ok: false, error: "You are not a member of this chat room" });
    }
    io.to(data.roomId).emit("message", { type: "message", roomId: data.roomId, sender: socket.username,
                                         content: data.content, timestamp: new Date().toISOString() });
    reply({ ok: true });
  });
  socket.on("join_room", (data) => {
    const room = data && rooms.get(data.roomId);
    if (!room || !room.participants.has(socket.username)) {
      return socket.emit("error", { message: "You are not a member of this chat room" });
    }
    socket.join(data.roomId);
    socket.emit("joined_room", { roomId: data.roomId });
  });
  socket.on("leave_room", (data) => {
    if (!data) return;
    socket.leave(data.roomId);
    socket.emit("left_room", { roomId: data.roomId });
  });
});
server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
process.on("SIGTERM", () => { io.close(); server.close(() => process.exit(0)); });
