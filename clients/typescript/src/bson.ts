/**
 * A small BSON encoder/decoder with STAGE's mapping between BSON and Lua values (spec §4.2):
 * the server decodes integer-keyed Lua tables from documents whose keys are `"#1"`, `"#2"`, …
 * and writes them back the same way, so a JS array travels as such a document and a document
 * whose keys are exactly `"#1"`…`"#n"` (or a BSON array) decodes to a JS array. No dependency:
 * the browser bundle stays small and free of Node modules.
 */

/** A value that crosses the wire. */
export type Value =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | Date
  | Value[]
  | { [key: string]: Value | undefined };

/** A BSON document (the payload of a packet is normally one). */
export type Doc = { [key: string]: Value | undefined };

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: false });
const strict = new TextDecoder("utf-8", { fatal: true });

const INT32_MIN = -0x80000000;
const INT32_MAX = 0x7fffffff;

/** Growable little-endian byte writer. */
class Writer {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  len = 0;

  reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.reserve(1);
    this.buf[this.len++] = v;
  }
  i32(v: number): void {
    this.reserve(4);
    this.view.setInt32(this.len, v, true);
    this.len += 4;
  }
  i64(v: bigint): void {
    this.reserve(8);
    this.view.setBigInt64(this.len, v, true);
    this.len += 8;
  }
  f64(v: number): void {
    this.reserve(8);
    this.view.setFloat64(this.len, v, true);
    this.len += 8;
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  cstring(s: string): void {
    const b = enc.encode(s);
    if (b.includes(0)) throw new TypeError(`BSON key contains NUL: ${JSON.stringify(s)}`);
    this.bytes(b);
    this.u8(0);
  }
}

function writeElement(w: Writer, key: string, v: Value): void {
  if (v === null) {
    w.u8(0x0a);
    w.cstring(key);
  } else if (typeof v === "boolean") {
    w.u8(0x08);
    w.cstring(key);
    w.u8(v ? 1 : 0);
  } else if (typeof v === "number") {
    if (Number.isInteger(v) && v >= INT32_MIN && v <= INT32_MAX) {
      w.u8(0x10);
      w.cstring(key);
      w.i32(v);
    } else if (Number.isSafeInteger(v)) {
      w.u8(0x12);
      w.cstring(key);
      w.i64(BigInt(v));
    } else {
      w.u8(0x01);
      w.cstring(key);
      w.f64(v);
    }
  } else if (typeof v === "bigint") {
    w.u8(0x12);
    w.cstring(key);
    w.i64(BigInt.asIntN(64, v));
  } else if (typeof v === "string") {
    w.u8(0x02);
    w.cstring(key);
    const b = enc.encode(v);
    w.i32(b.length + 1);
    w.bytes(b);
    w.u8(0);
  } else if (v instanceof Uint8Array) {
    w.u8(0x05);
    w.cstring(key);
    w.i32(v.length);
    w.u8(0x00); // generic binary subtype
    w.bytes(v);
  } else if (v instanceof Date) {
    w.u8(0x09);
    w.cstring(key);
    w.i64(BigInt(v.getTime()));
  } else if (Array.isArray(v)) {
    // A Lua sequence: an embedded document keyed "#1".."#n" (what the server writes).
    w.u8(0x03);
    w.cstring(key);
    const doc: Doc = {};
    v.forEach((item, i) => (doc[`#${i + 1}`] = item));
    writeDoc(w, doc);
  } else if (typeof v === "object") {
    w.u8(0x03);
    w.cstring(key);
    writeDoc(w, v);
  } else {
    throw new TypeError(`cannot encode ${typeof v} as BSON`);
  }
}

function writeDoc(w: Writer, doc: Doc): void {
  const start = w.len;
  w.i32(0); // length, patched below
  for (const [key, value] of Object.entries(doc)) {
    if (value === undefined) continue; // like a nil field of a Lua table: absent
    writeElement(w, key, value);
  }
  w.u8(0);
  w.view.setInt32(start, w.len - start, true);
}

/** Encodes `doc` as one BSON document. */
export function encode(doc: Doc): Uint8Array {
  const w = new Writer();
  writeDoc(w, doc);
  return w.buf.slice(0, w.len);
}

/** Thrown for bytes that are not a well-formed BSON document. */
export class BsonError extends Error {}

class Reader {
  view: DataView;
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    pos: number,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = pos;
  }
  need(n: number): void {
    if (n < 0 || this.pos + n > this.buf.length) throw new BsonError("truncated BSON");
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }
  i32(): number {
    this.need(4);
    const v = this.view.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }
  i64(): bigint {
    this.need(8);
    const v = this.view.getBigInt64(this.pos, true);
    this.pos += 8;
    return v;
  }
  f64(): number {
    this.need(8);
    const v = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  cstring(): string {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new BsonError("unterminated BSON key");
    const s = dec.decode(this.buf.subarray(this.pos, end));
    this.pos = end + 1;
    return s;
  }
}

/** An int64 as a number when it is exact, else as a bigint. */
function int64(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function readValue(r: Reader, type: number): Value {
  switch (type) {
    case 0x01:
      return r.f64();
    case 0x02:
    case 0x0d: // code
    case 0x0e: {
      // symbol
      const n = r.i32();
      if (n < 1) throw new BsonError("bad BSON string length");
      const b = r.bytes(n).subarray(0, n - 1);
      // Lua strings are bytes, and the server sends every Lua string (a binary a client sent
      // included) as a BSON string: one that is not UTF-8 comes back as its bytes.
      try {
        return strict.decode(b);
      } catch {
        return b.slice();
      }
    }
    case 0x03:
      return readDoc(r, false);
    case 0x04:
      return readDoc(r, true);
    case 0x05: {
      const n = r.i32();
      r.u8(); // subtype: the bytes are the value whatever it is
      return r.bytes(n).slice();
    }
    case 0x06: // undefined (deprecated)
    case 0x0a:
      return null;
    case 0x08:
      return r.u8() !== 0;
    case 0x09:
      return new Date(Number(r.i64()));
    case 0x10:
      return r.i32();
    case 0x11: // timestamp: an unsigned 64-bit integer
      return int64(BigInt.asUintN(64, r.i64()));
    case 0x12:
      return int64(r.i64());
    default:
      throw new BsonError(`unsupported BSON type 0x${type.toString(16)}`);
  }
}

function readDoc(r: Reader, isArray: boolean): Value {
  const start = r.pos;
  const len = r.i32();
  if (len < 5) throw new BsonError("bad BSON document length");
  r.need(len - 4);
  const end = start + len;
  const keys: string[] = [];
  const values: Value[] = [];
  for (;;) {
    const type = r.u8();
    if (type === 0) break;
    if (r.pos >= end) throw new BsonError("BSON element past the document's end");
    keys.push(r.cstring());
    values.push(readValue(r, type));
  }
  if (r.pos !== end) throw new BsonError("BSON document length does not match its elements");
  if (isArray) return values;
  // Keys "#1".."#n" in any order and nothing else: a Lua sequence → a JS array.
  if (keys.length > 0 && keys.every((k) => /^#[1-9][0-9]*$/.test(k))) {
    const arr: Value[] = new Array(keys.length);
    let dense = true;
    keys.forEach((k, i) => {
      const n = Number(k.slice(1));
      if (n > keys.length) dense = false;
      else arr[n - 1] = values[i];
    });
    if (dense && !arr.includes(undefined as unknown as Value)) return arr;
  }
  const doc: Doc = {};
  keys.forEach((k, i) => (doc[k] = values[i]));
  return doc;
}

/** Decodes one BSON document that fills `bytes` exactly. */
export function decode(bytes: Uint8Array): Value {
  const r = new Reader(bytes, 0);
  const v = readDoc(r, false);
  if (r.pos !== bytes.length) throw new BsonError("bytes after the BSON document");
  return v;
}
