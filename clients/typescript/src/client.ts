/**
 * The transport-independent client: request/reply matched by a request id, timeouts, pushes
 * from the server, and reconnect with exponential backoff. A `Transport` opens one
 * connection (WebSocket in `websocket.ts`, TCP in `node.ts`) and delivers decoded payloads.
 *
 * Request ids: `request()` adds the field `rid` (an integer, unique per client) to the packet;
 * a reply is a payload that carries the same `rid` back. The server script must copy it into
 * its answer (`return { ..., rid = data.rid }`; an echo does so by itself). A payload without
 * a known `rid` (a push, or a reply that came after its timeout) goes to the `message`
 * listeners.
 */

import type { Value } from "./bson.js";
import { encodeFrame } from "./frame.js";

/** One open connection, as a transport gives it. */
export interface Connection {
  /** Sends one frame (already encoded). */
  send(frame: Uint8Array): void;
  /** Closes the connection; `onClose` follows. */
  close(): void;
}

/** The callbacks a transport calls for one connection. */
export interface ConnectionEvents {
  /** A decoded payload arrived. */
  onPayload(payload: Value): void;
  /** The connection ended (once), with the reason if it failed. */
  onClose(reason?: Error): void;
}

/** Opens connections: resolves once the connection can send, rejects if it cannot open. */
export type Transport = (events: ConnectionEvents) => Promise<Connection>;

export interface ClientOptions {
  /** Default time a `request` waits for its reply, in msec (default 5000). */
  timeout?: number;
  /** Reconnect after a lost connection (default true). */
  reconnect?: boolean;
  /** First reconnect delay in msec (default 100); doubles after each failure. */
  backoffMin?: number;
  /** Longest reconnect delay in msec (default 5000). */
  backoffMax?: number;
  /** Name of the request id field (default "rid"). */
  idField?: string;
}

/** Rejection of a request whose reply did not come in time. */
export class TimeoutError extends Error {}
/** Rejection of requests when the client is closed. */
export class ClosedError extends Error {}

/** A packet sent to the server: STAGE's scripts dispatch on `message`. */
export type Packet = { message: string; [key: string]: Value | undefined };

/**
 * Maps a request's `message` to its reply type, e.g. `{ echo: EchoReply, login: LoginReply }`.
 * Untyped clients use `Record<string, any>`.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type ReplyMap = Record<string, any>;

type Pending = {
  resolve(v: Value): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
};

type Listener<T> = (arg: T) => void;

export class StageClient<Replies extends ReplyMap = ReplyMap> {
  private readonly opts: Required<ClientOptions>;
  private conn: Connection | null = null;
  private connecting = false;
  private closed = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** Frames of requests made while disconnected, sent on the next connect. */
  private outbox: { id: number; frame: Uint8Array }[] = [];
  private readonly listeners = {
    message: new Set<Listener<Value>>(),
    open: new Set<Listener<void>>(),
    close: new Set<Listener<Error | undefined>>(),
  };

  constructor(
    private readonly transport: Transport,
    options: ClientOptions = {},
  ) {
    this.opts = {
      timeout: options.timeout ?? 5000,
      reconnect: options.reconnect ?? true,
      backoffMin: options.backoffMin ?? 100,
      backoffMax: options.backoffMax ?? 5000,
      idField: options.idField ?? "rid",
    };
    this.open();
  }

  /** True while a connection is open. */
  get connected(): boolean {
    return this.conn !== null;
  }

  /** `message`: payloads that are not replies; `open`/`close`: each connection's start/end. */
  on(event: "message", fn: Listener<Value>): () => void;
  on(event: "open", fn: Listener<void>): () => void;
  on(event: "close", fn: Listener<Error | undefined>): () => void;
  on(event: "message" | "open" | "close", fn: Listener<never>): () => void {
    const set = this.listeners[event] as Set<Listener<never>>;
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Resolves at the next open connection (now if there is one). */
  ready(): Promise<void> {
    if (this.conn) return Promise.resolve();
    if (this.closed) return Promise.reject(new ClosedError("client closed"));
    return new Promise((resolve) => {
      const off = this.on("open", () => {
        off();
        resolve();
      });
    });
  }

  /** Sends a packet that expects no reply (dropped if no connection is open). */
  send(packet: Packet): boolean {
    if (!this.conn) return false;
    this.conn.send(encodeFrame(packet));
    return true;
  }

  /**
   * Sends `packet` with a fresh request id and resolves with the reply that echoes it, or
   * rejects with `TimeoutError` after `timeout` msec. Made while disconnected, the request is
   * sent as soon as a connection opens (the timeout still counts from now).
   */
  request<M extends string>(
    packet: { message: M; [key: string]: Value | undefined },
    timeout = this.opts.timeout,
  ): Promise<M extends keyof Replies ? Replies[M] : Value> {
    if (this.closed) return Promise.reject(new ClosedError("client closed"));
    const id = this.nextId++;
    const frame = encodeFrame({ ...packet, [this.opts.idField]: id });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.outbox = this.outbox.filter((o) => o.id !== id);
        reject(new TimeoutError(`no reply to ${packet.message} (${this.opts.idField} ${id}) in ${timeout} ms`));
      }, timeout);
      this.pending.set(id, { resolve: resolve as (v: Value) => void, reject, timer });
      if (this.conn) this.conn.send(frame);
      else this.outbox.push({ id, frame });
    });
  }

  /** Closes the connection for good: no reconnect, pending requests rejected. */
  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ClosedError("client closed"));
    }
    this.pending.clear();
    this.outbox = [];
    this.conn?.close();
  }

  private open(): void {
    if (this.closed || this.conn || this.connecting) return;
    this.connecting = true;
    let self: Connection | null = null;
    let ended = false;
    this.transport({
      onPayload: (payload) => this.dispatch(payload),
      onClose: (reason) => {
        if (ended) return;
        ended = true;
        if (self && this.conn === self) {
          this.conn = null;
          for (const fn of this.listeners.close) fn(reason);
          this.schedule();
        }
      },
    }).then(
      (conn) => {
        this.connecting = false;
        if (ended) {
          // Closed before the open resolved.
          this.schedule();
          return;
        }
        if (this.closed) {
          conn.close();
          return;
        }
        self = conn;
        this.conn = conn;
        this.attempt = 0;
        const queued = this.outbox;
        this.outbox = [];
        for (const { frame } of queued) conn.send(frame);
        for (const fn of this.listeners.open) fn();
      },
      (err: Error) => {
        this.connecting = false;
        for (const fn of this.listeners.close) fn(err);
        this.schedule();
      },
    );
  }

  /** Reconnects after a delay: backoffMin·2^attempt capped at backoffMax, with jitter. */
  private schedule(): void {
    if (this.closed || !this.opts.reconnect || this.retryTimer) return;
    const base = Math.min(this.opts.backoffMax, this.opts.backoffMin * 2 ** this.attempt);
    this.attempt++;
    // Up to 25% less so that many clients that lost the same server do not return in step.
    const delay = base * (0.75 + Math.random() * 0.25);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  private dispatch(payload: Value): void {
    if (payload !== null && typeof payload === "object" && !Array.isArray(payload) && !(payload instanceof Uint8Array) && !(payload instanceof Date)) {
      const id = payload[this.opts.idField];
      if (typeof id === "number") {
        const p = this.pending.get(id);
        if (p) {
          this.pending.delete(id);
          clearTimeout(p.timer);
          p.resolve(payload);
          return;
        }
      }
    }
    for (const fn of this.listeners.message) fn(payload);
  }
}
