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
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import OpenAI from "openai";
import { launchChromium, listen, smtpSink, verifyWebhook } from "./helpers.mjs";

// The demo mails run through the default model (Qwen2.5-Coder-1.5B) in a debug build on 2 cores.
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
  smtp = smtpSink(mails);
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
  // The chat model it serves: the default, as a newcomer gets it.
  printed.model = find(/OpenAI API\s+\S+\s+\(models: ([^,)]+)/);
  assert.equal(printed.model, "qwen2.5-coder-1.5b");
  // The first start's credentials are in a file readable by its owner only, never on stderr.
  const secretsFile = find(/first-start credentials \(.*\) written to (\S+)/);
  assert.equal(statSync(secretsFile).mode & 0o777, 0o600);
  const secrets = Object.fromEntries(
    [...readFileSync(secretsFile, "utf8").matchAll(/^(\w+) = "([^"]*)"$/gm)].map((m) => [m[1], m[2]]),
  );
  printed.password = secrets.admin_password;
  printed.secret = secrets.crm_webhook_secret;
  printed.key = secrets.api_key;
  for (const [name, value] of Object.entries(secrets)) {
    assert.ok(value && !printed.lines.some((l) => l.includes(value)), `${name} is missing or was printed`);
  }

  browser = await launchChromium();
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
    for (const row of await page.locator("#queue tbody tr[data-href]").all()) {
      const cells = row.locator("td");
      const actions = Number((await cells.nth(7).innerText()).trim());
      const status = (await cells.nth(8).innerText()).trim();
      if (actions >= 2 && status === "to review") return await row.getAttribute("data-href");
    }
    return null;
  }, QUEUE_TIMEOUT_MS);

  await page.goto(new URL(target, printed.review).href);
  assert.ok(await page.isVisible("#extraction >> text=threat_level"));
  await page.click("button.approve");
  await page.waitForURL(/\/confirm\??$/);
  await page.click("#confirm");
  await page.waitForURL(/notice=approved/);

  await waitFor("the CRM webhook", () => webhooks.length >= 1, 60_000);
  const hook = webhooks[0];
  assert.equal(hook.path, "/hooks/crm");
  assert.ok(verifyWebhook(printed.secret, hook.headers, hook.body), "signed with the printed secret");
  const payload = JSON.parse(hook.body);
  assert.equal(typeof payload.message, "number");
  assert.ok(["low", "medium", "high", "critical"].includes(payload.threat_level), hook.body);
  await waitFor("the reply mail", () => mails.length >= 1, 60_000);
  assert.match(mails[0].data, /In-Reply-To: <\d\d-[a-z-]+@verre-demo\.example>/);

  // The OpenAI API with the official client and the printed key.
  const client = new OpenAI({ baseURL: printed.api, apiKey: printed.key });
  const chat = await client.chat.completions.create({
    model: printed.model,
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
  const row = cost.groups.find((g) => g.group === printed.model);
  assert.ok(row && row.requests >= 1 && row.completion_tokens > 0, JSON.stringify(cost));
  const audit = verre(["audit", "verify"]);
  assert.match(audit, /^ok: the chain is intact/m, audit);
});
