/**
 * The browser-safe entry point of the STAGE client: BSON, framing, the client and the
 * WebSocket transport on the global `WebSocket`. Node's TCP and `ws` transports are in
 * `stage-client/node`.
 */

export * from "./bson.js";
export * from "./frame.js";
export * from "./client.js";
export * from "./websocket.js";
export * from "./v1.js";
