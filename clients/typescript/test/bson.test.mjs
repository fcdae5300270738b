// Encoding and decoding without a server: bytes checked against hand-written BSON, the "#n"
// array convention, integer widths, and malformed input refused.

import assert from "node:assert/strict";
import { test } from "node:test";

import { decode, decodeFrame, encode, encodeFrame, FrameReader, BsonError, FrameError } from "../dist/index.js";

const hex = (b) => Buffer.from(b).toString("hex");

test("a frame is the document {v: payload} with its little-endian length", () => {
  const frame = encodeFrame({ message: "hi" });
  // 4 len | 03 'v' 00 | sub: 4 len | 02 'message' 00 | 3 'hi' 00 | 00 | 00
  assert.equal(
    hex(frame),
    "1d000000" + "037600" + "15000000" + "026d65737361676500" + "03000000" + "686900" + "00" + "00",
  );
  assert.equal(frame.length, 0x1d);
  assert.deepEqual(decodeFrame(frame), { message: "hi" });
});

test("values round-trip with STAGE's mapping", () => {
  const value = {
    s: "héllo",
    i: 42,
    neg: -7,
    big: 2 ** 40,
    huge: 2n ** 62n,
    f: 1.5,
    t: true,
    n: null,
    bin: new Uint8Array([0, 1, 255]),
    nested: { a: { b: "c" } },
    list: ["x", 2, { y: 3 }],
  };
  assert.deepEqual(decode(encode(value)), value);
});

test("arrays travel as documents keyed #1..#n, like Lua sequences", () => {
  const bytes = encode({ a: ["p", "q"] });
  const raw = Buffer.from(bytes).toString("latin1");
  assert.ok(raw.includes("\x02#1\x00") && raw.includes("\x02#2\x00"), hex(bytes));
  // Out of order "#n" keys still form the sequence; a gap keeps them as keys.
  const sparse = encode({ "#3": 1, "#1": 2 });
  assert.deepEqual(decode(sparse), { "#3": 1, "#1": 2 });
  assert.deepEqual(decode(encode({ "#2": "b", "#1": "a" })), ["a", "b"]);
});

test("a BSON string that is not UTF-8 decodes to its bytes", () => {
  // {"s": "\xff\x00"}: a Lua string holding bytes, as the server sends it.
  const doc = new Uint8Array([15, 0, 0, 0, 2, 115, 0, 3, 0, 0, 0, 0xff, 0x00, 0, 0]);
  assert.deepEqual(decode(doc), { s: new Uint8Array([0xff, 0]) });
});

test("integers: int32 when they fit, int64 beyond, double for fractions", () => {
  assert.equal(encode({ x: 1 })[4], 0x10);
  assert.equal(encode({ x: 2 ** 31 })[4], 0x12);
  assert.equal(encode({ x: 0.5 })[4], 0x01);
  assert.equal(encode({ x: 5n })[4], 0x12);
  assert.equal(decode(encode({ x: 2n ** 63n - 1n })).x, 2n ** 63n - 1n);
});

test("malformed documents and frames are refused", () => {
  const good = encode({ a: "b" });
  assert.throws(() => decode(good.subarray(0, good.length - 1)), BsonError);
  const bad = good.slice();
  bad[0] += 1;
  assert.throws(() => decode(bad), BsonError);
  assert.throws(() => decodeFrame(new Uint8Array([4, 0, 0, 0])), FrameError);
  const enc = encodeFrame({ a: 1 });
  enc[3] |= 0x80;
  assert.throws(() => decodeFrame(enc), FrameError);
});

test("FrameReader cuts frames out of a stream split anywhere", () => {
  const a = encodeFrame({ n: 1 });
  const b = encodeFrame({ n: 2, s: "two" });
  const stream = new Uint8Array([...a, ...b]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const r = new FrameReader();
    const out = [...r.push(stream.subarray(0, cut)), ...r.push(stream.subarray(cut))];
    assert.deepEqual(out, [{ n: 1 }, { n: 2, s: "two" }]);
  }
  assert.throws(() => new FrameReader(100).push(new Uint8Array([200, 0, 0, 0])), FrameError);
});
