/**
 * Node-only transports: TCP through `net.Socket` (the packet stream cut by `FrameReader`) and
 * WebSocket through the `ws` package (Node 20 has no global WebSocket). Kept out of
 * `index.ts` so that the browser bundle imports no Node module.
 */

import { Socket } from "node:net";
import WebSocket from "ws";

import type { Connection, ConnectionEvents, Transport } from "./client.js";
import { FrameReader } from "./frame.js";
import { webSocketTransport, type WebSocketClass } from "./websocket.js";

export * from "./index.js";

/** A transport over TCP to `host:port` (a `tcp://…?packet=IN,OUT` listener). */
export function tcpTransport(host: string, port: number, connectTimeout = 5000): Transport {
  return (events: ConnectionEvents) =>
    new Promise<Connection>((resolve, reject) => {
      const sock = new Socket();
      const reader = new FrameReader();
      let open = false;
      let failure: Error | undefined;
      sock.setNoDelay(true);
      sock.setTimeout(connectTimeout, () => sock.destroy(new Error(`connect to ${host}:${port} timed out`)));
      sock.connect(port, host, () => {
        open = true;
        sock.setTimeout(0);
        resolve({
          send: (frame) => void sock.write(frame),
          close: () => sock.end(),
        });
      });
      sock.on("data", (chunk: Buffer) => {
        try {
          for (const payload of reader.push(chunk)) events.onPayload(payload);
        } catch (err) {
          sock.destroy(err as Error);
        }
      });
      sock.on("error", (err) => (failure = err));
      sock.on("close", () => {
        if (open) events.onClose(failure);
        else reject(failure ?? new Error(`cannot connect to ${host}:${port}`));
      });
    });
}

/** A WebSocket transport for Node (the `ws` package). */
export function nodeWebSocketTransport(url: string): Transport {
  return webSocketTransport(url, WebSocket as unknown as WebSocketClass);
}
