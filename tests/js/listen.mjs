// The seed's client, as its documentation shows it: the official socket.io-client v4,
// a JWT in the auth handshake, a `job_completed` listener.
//
//   SMARTGEN_TOKEN=<jwt> node listen.mjs <url> <websocket|polling> [timeoutSeconds]
//
// stdout: each `job_completed` payload, one JSON line; exits 0 after the first one.
// stderr: progress ("opened via <transport>", "upgraded to <transport>", "connected via …").
// Exit codes: 2 timeout, 3 connection refused, 4 usage, 5 disconnected.
import { io } from "socket.io-client";

const [url, mode = "websocket", timeoutArg = "30"] = process.argv.slice(2);
const token = process.env.SMARTGEN_TOKEN;
if (!url || !token || !["websocket", "polling"].includes(mode)) {
  console.error("usage: SMARTGEN_TOKEN=<jwt> node listen.mjs <url> <websocket|polling> [timeout]");
  process.exit(4);
}

// "polling": start on HTTP long-polling and upgrade to websocket (the client's default).
const transports = mode === "websocket" ? ["websocket"] : ["polling", "websocket"];
const socket = io(url, { auth: { token }, transports, reconnection: false });

function finish(code, message) {
  if (message) console.error(message);
  socket.close();
  process.exit(code);
}

const timer = setTimeout(
  () => finish(2, `timeout: no job_completed within ${timeoutArg}s`),
  Number(timeoutArg) * 1000,
);

socket.io.on("open", () => {
  const engine = socket.io.engine;
  console.error(`opened via ${engine.transport.name}`);
  engine.on("upgrade", (transport) => console.error(`upgraded to ${transport.name}`));
});

socket.on("connect", () => console.error(`connected via ${socket.io.engine.transport.name}`));

socket.on("connect_error", (err) => finish(3, `connect_error: ${err.message}`));

socket.on("disconnect", (reason) => finish(5, `disconnected: ${reason}`));

socket.on("job_completed", (jobData) => {
  clearTimeout(timer);
  process.stdout.write(`${JSON.stringify(jobData)}\n`, () => {
    socket.off("disconnect");
    finish(0);
  });
});
