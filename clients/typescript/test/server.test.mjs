// Against the real `stage` binary (test/server.mjs): request/reply over TCP and over
// WebSocket, a push delivered to `message` listeners, a request without an answer timing
// out, and a client that reconnects by itself after the server restarts.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { StageClient, TimeoutError, nodeWebSocketTransport, tcpTransport } from "../dist/node.js";
import { Stage } from "./server.mjs";

let stage;
before(async () => {
  stage = await Stage.start();
});
after(async () => {
  await stage?.dispose();
});

const transports = {
  tcp: () => tcpTransport("127.0.0.1", stage.tcpPort),
  ws: () => nodeWebSocketTransport(stage.wsUrl),
};

for (const [name, transport] of Object.entries(transports)) {
  test(`${name}: login and echo replies come back matched by rid`, async () => {
    const client = new StageClient(transport());
    try {
      const login = await client.request({ message: "login", user: "ann" });
      assert.equal(login.message, "login");
      assert.equal(login.result, "ok");
      assert.equal(login.user, "ann");
      assert.equal(typeof login.socket, "number");
      // Lua strings are bytes: the server answers a binary as a BSON string, which decodes
      // to a string when it is UTF-8 and to its bytes otherwise.
      // Several in flight at once: each resolves with its own reply.
      const payloads = [1, 2, 3, 4, 5].map((n) => ({
        message: "echo",
        n,
        list: ["a", n, { deep: true }],
        bin: new Uint8Array([n, 0, 255]),
        text: "x".repeat(n * 100),
      }));
      const replies = await Promise.all(payloads.map((p) => client.request(p)));
      replies.forEach((r, i) => {
        const { rid, ...rest } = r;
        assert.equal(typeof rid, "number");
        assert.deepEqual(rest, payloads[i]);
      });
    } finally {
      client.close();
    }
  });

  test(`${name}: a packet the server does not answer times out`, async () => {
    const client = new StageClient(transport());
    try {
      await assert.rejects(client.request({ message: "heartbeat" }, 300), TimeoutError);
      // The connection is still fine afterwards.
      const r = await client.request({ message: "echo", after: "timeout" });
      assert.equal(r.after, "timeout");
    } finally {
      client.close();
    }
  });

  test(`${name}: a payload without a pending rid goes to message listeners`, async () => {
    const client = new StageClient(transport());
    try {
      await client.ready();
      const got = new Promise((ok) => client.on("message", ok));
      // echo of a packet that carries no rid: the server's answer is a push to the client.
      assert.ok(client.send({ message: "echo", push: 1 }));
      assert.deepEqual(await got, { message: "echo", push: 1 });
    } finally {
      client.close();
    }
  });
}

test("both transports reconnect after the server restarts", async () => {
  const clients = Object.values(transports).map(
    (t) => new StageClient(t(), { backoffMin: 50, backoffMax: 500 }),
  );
  try {
    for (const c of clients) await c.request({ message: "echo", phase: 1 });
    const closed = clients.map((c) => new Promise((ok) => c.on("close", ok)));
    const reopened = clients.map((c) => new Promise((ok) => c.on("open", ok)));
    await stage.stop();
    await Promise.all(closed);
    for (const c of clients) assert.equal(c.connected, false);
    await stage.start();
    await Promise.all(reopened);
    for (const c of clients) {
      const r = await c.request({ message: "echo", phase: 2 });
      assert.equal(r.phase, 2);
    }
  } finally {
    for (const c of clients) c.close();
  }
});

test("a request made while disconnected is sent once the connection opens", async () => {
  const client = new StageClient(transports.ws());
  try {
    assert.equal(client.connected, false);
    const r = await client.request({ message: "echo", early: true });
    assert.equal(r.early, true);
  } finally {
    client.close();
  }
});
