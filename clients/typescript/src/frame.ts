/**
 * STAGE's `packet` framing (spec §4.2): a frame is a 4-byte little-endian length that counts
 * itself followed by the rest of a BSON document — the frame is exactly the document `{"v":
 * payload}`, and the payload is the value of the document's first element. Over WebSocket
 * each binary message is one frame; over TCP `FrameReader` cuts frames out of the stream.
 */

import { decode, encode, type Value } from "./bson.js";

/** Bit 31 of the length marks an encrypted frame (spec §4.5), which this client never sends. */
const ENCRYPTED = 0x80000000;

/** Thrown when the bytes cannot be a STAGE frame. */
export class FrameError extends Error {}

/** The frame carrying `payload` (sent as `{"v": payload}`). */
export function encodeFrame(payload: Value): Uint8Array {
  return encode({ v: payload });
}

/** The payload of one complete frame: the value of its document's first element. */
export function decodeFrame(frame: Uint8Array): Value {
  if (frame.length < 5) throw new FrameError(`frame of ${frame.length} bytes is too short`);
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const len = view.getUint32(0, true);
  if (len & ENCRYPTED) throw new FrameError("encrypted frame: no key");
  if (len !== frame.length) throw new FrameError(`frame length ${len} but ${frame.length} bytes`);
  const doc = decode(frame);
  if (doc === null || typeof doc !== "object" || doc instanceof Uint8Array || doc instanceof Date)
    throw new FrameError("frame is not a document");
  const first = Array.isArray(doc) ? doc[0] : Object.values(doc)[0];
  return first === undefined ? null : first;
}

/** Cuts frames out of a byte stream (TCP): feed chunks, get every complete payload. */
export class FrameReader {
  private buf = new Uint8Array(0);

  /** `maxFrame`: a peer announcing a bigger frame is broken; `push` throws. */
  constructor(private readonly maxFrame = 16 * 1024 * 1024) {}

  push(chunk: Uint8Array): Value[] {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    const out: Value[] = [];
    let pos = 0;
    while (joined.length - pos >= 4) {
      const len = new DataView(joined.buffer, pos, 4).getUint32(0, true) & 0x7fffffff;
      if (len <= 4 || len > this.maxFrame) throw new FrameError(`bad frame length ${len}`);
      if (joined.length - pos < len) break;
      out.push(decodeFrame(joined.subarray(pos, pos + len)));
      pos += len;
    }
    this.buf = joined.slice(pos);
    return out;
  }

  /** Bytes of a frame that has begun but is not complete yet. */
  get pending(): number {
    return this.buf.length;
  }
}
