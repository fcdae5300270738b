// Compile-time checks (`npm test` runs `tsc -p test/types` first, which fails on any error
// here): packet-defs' generated TypeScript (its golden file) types StageClient's requests,
// and the hand-written V1Replies type the v1 example's. Never executed.

import { StageClient, type Transport, type V1Replies } from "../../src/index.js";
import type { LoginOk, Move, Replies } from "../../../../packet-defs/tests/golden/all_types_packets.js";

declare const transport: Transport;

export async function generated(): Promise<void> {
  const client = new StageClient<Replies>(transport);
  const ok: LoginOk = await client.request({ message: "login", name: "ann" });
  const color: "red" | "green" | "blue" = ok.color;
  // @ts-expect-error: a login_ok has no field `user`
  ok.user;
  const move: Move = { message: "move", pos: { x: 1, y: 2 }, path: [{ x: 0, y: 0 }] };
  client.send({ ...move });
  // @ts-expect-error: a Move needs `path`
  const bad: Move = { message: "move", pos: { x: 1, y: 2 } };
  void color, bad;
}

export async function v1(): Promise<void> {
  const client = new StageClient<V1Replies>(transport);
  const login = await client.request({ message: "login", user: "ann" });
  const socket: number = login.socket;
  // @ts-expect-error: result is a string
  const n: number = login.result;
  void socket, n;
}
