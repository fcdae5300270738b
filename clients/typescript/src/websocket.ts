/**
 * The WebSocket transport: one STAGE frame per binary message (the listener is
 * `broker.ready("ws://host:port/path?packet=IN,OUT", …)`). It uses the standard WebSocket
 * API only, so it runs in browsers on the global `WebSocket` and in Node on the `ws` package's
 * class (which `node.ts` passes in).
 */

import type { Connection, ConnectionEvents, Transport } from "./client.js";
import { FrameError, FrameReader } from "./frame.js";

/** The part of the standard WebSocket class this transport uses. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number): void;
}
export type WebSocketClass = new (url: string) => WebSocketLike;

/** A transport that opens `url` with `WebSocketImpl` (default: the global `WebSocket`). */
export function webSocketTransport(url: string, WebSocketImpl?: WebSocketClass): Transport {
  return (events: ConnectionEvents) =>
    new Promise<Connection>((resolve, reject) => {
      const Impl = WebSocketImpl ?? (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
      if (!Impl) {
        reject(new Error("no WebSocket class: in Node use stage-client/node"));
        return;
      }
      const ws = new Impl(url);
      ws.binaryType = "arraybuffer";
      let open = false;
      let done = false;
      const finish = (reason?: Error) => {
        if (done) return;
        done = true;
        if (open) events.onClose(reason);
        else reject(reason ?? new Error(`cannot open ${url}`));
      };
      ws.onopen = () => {
        open = true;
        resolve({
          send: (frame) => ws.send(frame),
          close: () => ws.close(1000),
        });
      };
      ws.onmessage = (ev) => {
        if (!(ev.data instanceof ArrayBuffer)) return; // text messages are not packets
        try {
          // One frame per message is what STAGE sends; several whole frames are read too,
          // a frame split over messages is refused (as the server does).
          const reader = new FrameReader();
          const payloads = reader.push(new Uint8Array(ev.data));
          if (reader.pending > 0) throw new FrameError("a frame split over WebSocket messages");
          for (const payload of payloads) events.onPayload(payload);
        } catch (err) {
          // A broken frame means a broken peer: drop the connection (it reconnects).
          ws.close(1002);
          finish(err as Error);
        }
      };
      ws.onerror = () => {}; // the close event follows with the code
      ws.onclose = (ev) =>
        finish(ev.code === 1000 ? undefined : new Error(`WebSocket closed: ${ev.code} ${ev.reason}`));
    });
}
