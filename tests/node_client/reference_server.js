// socket.io 4.8.1 with its own connection state recovery (in-memory window, default options): the reference
// the recovery harness is checked against, so that its xfail tests are known to turn green on a server that
// recovers, and to tell apart a server that only recovers as socket.io does.
//
//   node reference_server.js        -> {"ev":"listening","port"} on stdout, 127.0.0.1 only
//
// Every socket joins one room. stdin {"cmd":"bomb","count":N,"every_ms":M} broadcasts N `message` events
// {roomId, seq, id} to it, one every M ms, seq counting on from the last bombing; then {"ev":"done","seq"}.
"use strict";

const { createServer } = require("node:http");
const readline = require("node:readline");
const { Server } = require("socket.io");

const ROOM = "reference-room";
const http = createServer();
const io = new Server(http, { connectionStateRecovery: {} });
let seq = 0;

function out(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

io.on("connection", (socket) => {
  socket.join(ROOM); // a recovered socket gets its rooms back; joining again changes nothing
  out({ ev: "connection", recovered: socket.recovered });
});

function bomb(count, everyMs) {
  const last = seq + count;
  const timer = setInterval(() => {
    seq += 1;
    io.to(ROOM).emit("message", { roomId: ROOM, seq, id: `m${seq}` });
    if (seq >= last) {
      clearInterval(timer);
      out({ ev: "done", seq });
    }
  }, everyMs);
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.cmd === "bomb") bomb(Number(command.count), Number(command.every_ms));
});
process.stdin.on("end", () => process.exit(0));
http.listen(0, "127.0.0.1", () => out({ ev: "listening", port: http.address().port }));
