// One MinitalkChat frontend socket (socket.io-client 4.8.1, as frontend/src/services/socket.js builds it),
// driven by a Python test over stdin/stdout, one JSON object per line.
//
//   node recovery_client.js <server url> <token>
//
// stdout (events):  {"ev":"connect","id","recovered","pid","transport"}   every (re)connect
//                   {"ev":"message","roomId","seq","id","nargs","offset"}  every `message` event, in arrival order
//                   {"ev":"disconnect","reason"} {"ev":"connect_error","message"} {"ev":"reconnect_attempt","attempt"}
//                   {"ev":"open","transport"} {"ev":"upgrade","transport"} {"ev":"error","payload"} {"ev":"dropping","away_ms"} {"ev":"bye"}
// stdin (commands): {"cmd":"drop","away_ms":N}  close the Engine.IO connection under the Socket and let the
//                                               Manager reconnect the *same* Socket after exactly N ms
//                   {"cmd":"exit"}               socket.disconnect() and exit (so does the end of stdin)
//
// Why `socket.io.engine.close()`: it closes the engine with reason "forced close"; the Manager's onclose then
// calls reconnect() because skipReconnect is false (only Manager._close(), i.e. socket.disconnect(), sets it).
// The Socket stays subscribed to its Manager, so on the new engine's "open" it runs onopen() ->
// _sendConnectPacket(), which sends {pid, offset} when the previous CONNECT reply carried a pid: the client
// half of connection state recovery. A manual socket.disconnect() destroys the Socket and never recovers.
"use strict";

const readline = require("node:readline");
const { io } = require("socket.io-client");

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  process.stderr.write("usage: node recovery_client.js <server url> <token>\n");
  process.exit(2);
}

function out(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

// Exactly the frontend's call (contract §5.3): token in the query, no auth, no transports (polling first,
// then the websocket upgrade), autoConnect.
const socket = io(url, { query: { token }, autoConnect: true });
const manager = socket.io;
const defaults = {
  delay: manager.reconnectionDelay(),
  max: manager.reconnectionDelayMax(),
  jitter: manager.randomizationFactor(),
};

function restoreBackoff() {
  manager.reconnectionDelay(defaults.delay);
  manager.reconnectionDelayMax(defaults.max);
  manager.randomizationFactor(defaults.jitter);
}

socket.on("connect", () => {
  out({
    ev: "connect",
    id: socket.id,
    recovered: socket.recovered === true, // `pid && this._pid === pid`: undefined when the server sent no pid
    pid: socket._pid ?? null, // private, reported for diagnosis only
    transport: manager.engine.transport.name,
  });
});
socket.on("disconnect", (reason) => out({ ev: "disconnect", reason }));
socket.on("connect_error", (err) => out({ ev: "connect_error", message: String(err && err.message) }));
socket.on("error", (payload) => out({ ev: "error", payload }));
socket.on("message", (...args) => {
  // The frontend's handler takes one argument; a recovering server appends the offset as a last string one.
  const message = args[0] || {};
  const last = args[args.length - 1];
  out({
    ev: "message",
    roomId: message.roomId,
    seq: message.seq,
    id: message.id,
    nargs: args.length,
    offset: args.length > 1 && typeof last === "string" ? last : null,
  });
});
manager.on("open", () => {
  out({ ev: "open", transport: manager.engine.transport.name });
  manager.engine.on("upgrade", (transport) => out({ ev: "upgrade", transport: transport.name }));
});
manager.on("reconnect_attempt", (attempt) => out({ ev: "reconnect_attempt", attempt }));
manager.on("reconnect", restoreBackoff);

function drop(awayMs) {
  // Manager.reconnect() waits backoff.duration(): min * 2^attempts, jittered, capped at max. With min = max =
  // awayMs and no jitter, the first attempt comes exactly awayMs after the close (a later one, if the server is
  // down then, awayMs after that); the frontend's defaults come back on "reconnect".
  manager.reconnectionDelay(awayMs);
  manager.reconnectionDelayMax(awayMs);
  manager.randomizationFactor(0);
  out({ ev: "dropping", away_ms: awayMs });
  manager.engine.close();
}

function exit() {
  socket.disconnect();
  out({ ev: "bye" });
  process.exit(0);
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const command = JSON.parse(line);
  if (command.cmd === "drop") drop(Number(command.away_ms));
  else if (command.cmd === "exit") exit();
  else process.stderr.write(`unknown command: ${line}\n`);
});
commands.on("close", exit);
