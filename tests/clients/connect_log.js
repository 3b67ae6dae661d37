// Preloaded with `node --require` into an agent under test: appends every outbound socket
// connection the process attempts ({host, port, path}) as a JSON line to the file named by the
// environment variable CONNECT_LOG_FILE, which the test sets for that child only.
// fetch (undici), http, https and tls all end in net.Socket.prototype.connect.
"use strict";

const fs = require("fs");
const net = require("net");

const logFile = process.env.CONNECT_LOG_FILE;
if (!logFile) {
  throw new Error("connect_log.js needs CONNECT_LOG_FILE");
}

const originalConnect = net.Socket.prototype.connect;

function describe(args) {
  let first = args[0];
  // Node normalizes arguments into an array before calling connect again.
  if (Array.isArray(first)) {
    first = first[0];
  }
  if (first !== null && typeof first === "object") {
    return {
      host: first.host ?? null,
      port: first.port == null ? null : Number(first.port),
      path: first.path ?? null,
    };
  }
  if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    return { host: typeof args[1] === "string" ? args[1] : "localhost", port: Number(first), path: null };
  }
  return { host: null, port: null, path: typeof first === "string" ? first : null };
}

net.Socket.prototype.connect = function connect(...args) {
  fs.appendFileSync(logFile, JSON.stringify(describe(args)) + "\n");
  return originalConnect.apply(this, args);
};
