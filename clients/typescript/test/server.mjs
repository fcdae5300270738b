// Starts the real `stage` binary for the tests: a temporary directory with a configuration
// and a start.lua that serves the embedded v1 example's packet handlers
// (engine/lua/examples/v1/packet.lua, loaded from the repository) on a tcp:// and a ws://
// listener, each on a free loopback port. STAGE_BIN overrides the binary's path.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../..");

export function stageBin() {
  const bin = process.env.STAGE_BIN ?? join(repoRoot, "target/release/stage");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run cargo build --release -p stage`);
  return bin;
}

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

function portOpen(port) {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1");
    s.on("connect", () => {
      s.destroy();
      ok(true);
    });
    s.on("error", () => ok(false));
  });
}

// The callbacks are written out in each broker.ready: callbacks are sent to every core as
// bytecode, so they cannot share a local function through an upvalue.
const RECEIVE = `function ()
  return function (socket, data, addr)
    stage.load("packet+" .. data.message, function (f)
      local v = f(socket, data)
      if v ~= nil then socket.commit(v, addr) end
    end)
  end
end`;
const START = `
broker.ready("tcp://127.0.0.1:TCP_PORT?packet=4k,10k", ${RECEIVE})
broker.ready("ws://127.0.0.1:WS_PORT/game?packet=4k,10k", ${RECEIVE})
log4cxx.out("READY")
`;

/** A running server: `tcpPort`, `wsPort`, `stop()`; `start()` again reuses the same ports. */
export class Stage {
  static async start() {
    const s = new Stage(await freePort(), await freePort());
    await s.start();
    return s;
  }

  constructor(tcpPort, wsPort) {
    this.tcpPort = tcpPort;
    this.wsPort = wsPort;
    this.dir = mkdtempSync(join(tmpdir(), "stage-ts-"));
    const config = {
      "#startup": [["lua.so+stage"]],
      "lua.so": {
        "%package": [".", join(repoRoot, "engine/lua/examples/v1")],
        "%reflush": 0,
        "lua.so+stage": "start",
      },
    };
    writeFileSync(join(this.dir, "stage.json"), JSON.stringify(config));
    writeFileSync(
      join(this.dir, "start.lua"),
      START.replace("TCP_PORT", String(tcpPort)).replace("WS_PORT", String(wsPort)),
    );
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}/game`;
  }

  async start() {
    const log = join(this.dir, "stage.log");
    writeFileSync(log, "");
    const { openSync } = await import("node:fs");
    const fd = openSync(log, "a");
    this.proc = spawn(stageBin(), ["-c", "stage.json", "-s", "stage.stop"], {
      cwd: this.dir,
      stdio: ["ignore", fd, fd],
    });
    this.exited = new Promise((ok) => this.proc.on("exit", ok));
    for (let i = 0; i < 300; i++) {
      if ((await portOpen(this.tcpPort)) && (await portOpen(this.wsPort))) return;
      if (this.proc.exitCode !== null) break;
      await new Promise((ok) => setTimeout(ok, 50));
    }
    throw new Error(`stage did not open its ports; log:\n${readFileSync(log, "utf8")}`);
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill("SIGTERM");
      await this.exited;
    }
  }

  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
