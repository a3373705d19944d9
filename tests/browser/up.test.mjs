// `verre up --demo` end to end, as a newcomer would run it: the demo mails go through the
// intake pipeline on the embedded model into the review queue; a reviewer approves one in
// headless Chromium; the CRM webhook arrives signed at a local receiver and the reply at a
// local SMTP sink; the official `openai` client gets a chat completion with the printed
// key; `verre cost` and `verre audit verify` run over the same home; Ctrl-C stops it.
//
// Run: VERRE_BIN=target/debug/verre VERRE_HOME=<a home with the models pulled>
//      node --test tests/browser/up.test.mjs   (tests/browser/run.sh sets it all up)
// The models are linked from $VERRE_HOME so the test does not download them again; without
// it `verre up` pulls them itself (from PyPI).

import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { createHmac, timingSafeEqual } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import OpenAI from "openai";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.VERRE_CHROMIUM ?? "/usr/bin/chromium";
// The demo mails run through a real (small) model in a debug build on 2 cores.
const QUEUE_TIMEOUT_MS = 8 * 60_000;

let home, up, browser, page;
const printed = { lines: [] };
const webhooks = [];
const mails = [];
let receiver, smtp;

function verre(args) {
  return execFileSync(process.env.VERRE_BIN, args, {
    env: { ...process.env, VERRE_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  }).toString();
}

/** Standard Webhooks verification, written from the spec (not verre's code). */
function verify(secret, headers, body) {
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const expected = createHmac("sha256", key)
    .update(`${headers["webhook-id"]}.${headers["webhook-timestamp"]}.${body}`)
    .digest();
  return (headers["webhook-signature"] ?? "").split(" ").some((entry) => {
    const [version, sig] = entry.split(",");
    const given = Buffer.from(sig ?? "", "base64");
    return version === "v1" && given.length === expected.length && timingSafeEqual(given, expected);
  });
}

async function listen(srv) {
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  return srv.address().port;
}

/** An SMTP server that accepts everything and records each message. */
function smtpSink() {
  return createTcpServer((sock) => {
    let buffer = "", inData = false, data = "", to = [];
    sock.write("220 sink ESMTP\r\n");
    sock.on("data", (chunk) => {
      buffer += chunk.toString("utf8");
      let nl;
      while ((nl = buffer.indexOf("\r\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 2);
        if (inData) {
          if (line === ".") {
            inData = false;
            mails.push({ to, data });
            data = "";
            to = [];
            sock.write("250 queued\r\n");
          } else data += line + "\n";
          continue;
        }
        const upper = line.toUpperCase();
        if (upper.startsWith("EHLO") || upper.startsWith("HELO")) sock.write("250-sink\r\n250 8BITMIME\r\n");
        else if (upper.startsWith("RCPT TO:")) { to.push(line.slice(8).trim()); sock.write("250 ok\r\n"); }
        else if (upper === "DATA") { inData = true; sock.write("354 go\r\n"); }
        else if (upper === "QUIT") { sock.end("221 bye\r\n"); }
        else sock.write("250 ok\r\n");
      }
    });
    sock.on("error", () => {});
  });
}

async function waitFor(what, check, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}\n--- verre up said:\n${printed.lines.slice(-40).join("\n")}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

before(async () => {
  assert.ok(process.env.VERRE_BIN, "set VERRE_BIN to the verre binary");
  home = mkdtempSync(join(tmpdir(), "verre-up-"));
  const models = process.env.VERRE_HOME && join(process.env.VERRE_HOME, "models");
  if (models && existsSync(models)) symlinkSync(models, join(home, "models"));

  receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      webhooks.push({ path: req.url, headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  const hookPort = await listen(receiver);
  smtp = smtpSink();
  const smtpPort = await listen(smtp);

  const env = { ...process.env, VERRE_HOME: home };
  for (const v of ["VERRE_DATA_KEY", "VERRE_DATA_KEY_FILE", "VERRE_CRM_WEBHOOK_SECRET", "VERRE_DATABASE"]) delete env[v];
  up = spawn(
    process.env.VERRE_BIN,
    ["up", "--demo", "--port", "0", "--crm-webhook-url", `http://127.0.0.1:${hookPort}/hooks/crm`,
      "--smtp-relay", `127.0.0.1:${smtpPort}`],
    { stdio: ["ignore", "ignore", "pipe"], env },
  );
  const lines = createInterface({ input: up.stderr });
  lines.on("line", (line) => printed.lines.push(line));
  await waitFor("verre up to print its URLs and credentials", () =>
    printed.lines.some((l) => l.includes("Ctrl-C stops everything")) || up.exitCode !== null, 10 * 60_000);
  assert.equal(up.exitCode, null, `verre up exited:\n${printed.lines.join("\n")}`);
  const find = (re) => {
    for (const l of printed.lines) {
      const m = l.match(re);
      if (m) return m[1];
    }
    assert.fail(`verre up did not print ${re}:\n${printed.lines.join("\n")}`);
  };
  printed.review = find(/review UI\s+(http:\/\/\S+\/review)/);
  printed.api = find(/OpenAI API\s+(http:\/\/\S+\/v1)/);
  printed.password = find(/user admin\s+password (\S+)/);
  printed.secret = find(/^\s+(whsec_\S+)/);
  printed.key = find(/OPENAI_API_KEY=(\S+)/);

  const profile = mkdtempSync(join(tmpdir(), "verre-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  page = browser.pages()[0] ?? (await browser.newPage());
});

after(async () => {
  await browser?.close();
  if (up && up.exitCode === null) {
    up.kill("SIGKILL");
    await once(up, "exit");
  }
  receiver?.close();
  smtp?.close();
  if (home) rmSync(home, { recursive: true, force: true });
});

test("verre up --demo: review queue fills, an approval is delivered signed, the API answers, cost and audit check out", async () => {
  // Log in with the printed admin password.
  await page.goto(printed.review);
  await page.fill("input[name=name]", "admin");
  await page.fill("input[name=password]", printed.password);
  await page.click("button[type=submit]");
  await page.waitForURL(printed.review);

  // Wait for a demo mail that reached review with staged actions.
  const target = await waitFor("a demo mail with staged actions in the review queue", async () => {
    await page.goto(printed.review);
    for (const row of await page.locator("table.queue tbody tr").all()) {
      const cells = row.locator("td");
      if ((await cells.count()) < 7) continue;
      const actions = Number((await cells.nth(5).innerText()).trim());
      const status = (await cells.nth(6).innerText()).trim();
      if (actions >= 2 && status === "to review") return await cells.nth(0).locator("a").getAttribute("href");
    }
    return null;
  }, QUEUE_TIMEOUT_MS);

  await page.goto(new URL(target, printed.review).href);
  assert.ok(await page.isVisible("#extraction >> text=threat_level"));
  await page.click("button.approve");
  await page.waitForURL(/notice=approved/);

  await waitFor("the CRM webhook", () => webhooks.length >= 1, 60_000);
  const hook = webhooks[0];
  assert.equal(hook.path, "/hooks/crm");
  assert.ok(verify(printed.secret, hook.headers, hook.body), "signed with the printed secret");
  const payload = JSON.parse(hook.body);
  assert.equal(typeof payload.message, "number");
  assert.ok(["low", "medium", "high", "critical"].includes(payload.threat_level), hook.body);
  await waitFor("the reply mail", () => mails.length >= 1, 60_000);
  assert.match(mails[0].data, /In-Reply-To: <\d\d-[a-z-]+@verre-demo\.example>/);

  // The OpenAI API with the official client and the printed key.
  const client = new OpenAI({ baseURL: printed.api, apiKey: printed.key });
  const chat = await client.chat.completions.create({
    model: "smollm2-135m",
    messages: [{ role: "user", content: "Say hello." }],
    max_tokens: 8,
  });
  assert.ok(chat.choices[0].message.content.length > 0);
  assert.ok(chat.usage.completion_tokens > 0);
  await assert.rejects(
    new OpenAI({ baseURL: printed.api, apiKey: "vk-wrong" }).models.list(),
    (e) => e.status === 401,
  );

  // Ctrl-C: a clean stop, then the ledger and the audit chain over the same home.
  up.kill("SIGINT");
  const [code] = await once(up, "exit");
  assert.equal(code, 0, printed.lines.slice(-20).join("\n"));
  assert.ok(printed.lines.some((l) => l.includes("verre up: stopped")));

  const cost = JSON.parse(verre(["cost", "--json", "--by", "model"]));
  const row = cost.groups.find((g) => g.group === "smollm2-135m");
  assert.ok(row && row.requests >= 1 && row.completion_tokens > 0, JSON.stringify(cost));
  const audit = verre(["audit", "verify"]);
  assert.match(audit, /^ok: the chain is intact/m, audit);
});
