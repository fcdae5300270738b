// Headless Chromium loads test/browser/index.html from a tiny HTTP server; the page imports
// the built browser entry (dist/index.js) and talks to a real stage over WebSocket; the
// dumped DOM must show the replies. Without chromium the test skips with one line, unless
// STAGE_REQUIRE_SERVICES=1 (CI), where that is a failure.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { Stage } from "./server.mjs";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");

async function findChromium() {
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      await promisify(execFile)("sh", ["-c", `command -v ${name}`]);
      return name;
    } catch {}
  }
  return null;
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };

/**
 * Serves the package directory's dist/ and test/browser/ (nothing else), and `/hold`, which
 * stays open until the page calls `/done` (or 60 s pass) so that virtual time waits.
 */
function serve() {
  const held = [];
  const release = () => held.splice(0).forEach((res) => res.writeHead(204).end());
  const server = createServer((req, res) => {
    const path = normalize(new URL(req.url, "http://x").pathname);
    if (path === "/hold") {
      held.push(res);
      setTimeout(release, 60000).unref();
      return;
    }
    if (path === "/done") {
      release();
      res.writeHead(204).end();
      return;
    }
    if (!path.startsWith("/dist/") && !path.startsWith("/test/browser/")) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(join(pkg, path));
      res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

test("a browser page talks to stage over WebSocket", async (t) => {
  const chromium = await findChromium();
  if (!chromium) {
    if (process.env.STAGE_REQUIRE_SERVICES === "1") assert.fail("chromium is not installed (apt install chromium)");
    t.skip("skipped browser test: chromium is not installed (apt install chromium)");
    return;
  }
  const stage = await Stage.start();
  const http = await serve();
  const profile = mkdtempSync(join(tmpdir(), "stage-ts-chromium-"));
  try {
    const page = `http://127.0.0.1:${http.address().port}/test/browser/index.html?ws=${encodeURIComponent(stage.wsUrl)}`;
    const { stdout } = await promisify(execFile)(
      chromium,
      [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        `--user-data-dir=${profile}`,
        "--virtual-time-budget=20000",
        "--dump-dom",
        page,
      ],
      { timeout: 90000, maxBuffer: 1 << 20 },
    );
    const m = /<pre id="out">REPLY (.*)<\/pre>/.exec(stdout);
    assert.ok(m, `no reply in the page: ${stdout}`);
    const { login, echo } = JSON.parse(m[1].replaceAll("&quot;", '"').replaceAll("&amp;", "&"));
    assert.equal(login.message, "login");
    assert.equal(login.result, "ok");
    assert.equal(login.user, "browser");
    assert.equal(typeof login.socket, "number");
    assert.equal(echo.message, "echo");
    assert.deepEqual(echo.list, [1, "two", { three: 3 }]);
    assert.notEqual(echo.rid, login.rid);
  } finally {
    http.close();
    await stage.dispose();
    rmSync(profile, { recursive: true, force: true });
  }
});
