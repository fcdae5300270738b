/**
 * Types of the embedded v1 example's packets (engine/lua/examples/v1/packet.lua: what
 * `cargo run --release` serves). That example has no packet-defs schema, so these are written
 * by hand; use them as `new StageClient<V1Replies>(…)`.
 */

import type { Value } from "./bson.js";

/** `login`'s answer. */
export interface LoginReply {
  message: "login";
  result: string;
  user?: string;
  /** The server's id of this connection. */
  socket: number;
  rid: number;
}

/** `echo` answers the packet as it came (with its `rid`). */
export type EchoReply = { message: "echo"; rid: number; [key: string]: Value | undefined };

/** Reply types by request `message` (`heartbeat` gets no answer: send it with `send`). */
export interface V1Replies {
  login: LoginReply;
  echo: EchoReply;
}
