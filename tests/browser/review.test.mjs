// The review UI in real headless Chromium: log in, open a message, edit the draft, approve
// (the webhook reaches a local receiver with a valid Standard Webhooks signature, the reply
// reaches a local SMTP sink), reject another, and a forged CSRF token is refused.
//
// Run: VERRE_BIN=target/debug/verre node --test tests/browser/review.test.mjs
// (tests/browser/run.sh installs Chromium and playwright-core first). VERRE_SCREENSHOT=PATH
// saves a screenshot of the message page there. Everything listens on 127.0.0.1 only.

import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, listen, smtpSink, verifyWebhook } from "./helpers.mjs";

const SECRET = "whsec_" + randomBytes(32).toString("base64");

let dir, db, server, baseURL, browser, page;
const webhooks = []; // { headers, body, valid }
const mails = []; // { from, to, data }
let receiver, smtp;

function verre(args, input) {
  return execFileSync(process.env.VERRE_BIN, args, {
    input,
    env: { ...process.env, VERRE_HOME: dir },
    stdio: ["pipe", "pipe", "pipe"],
  }).toString();
}

async function waitFor(what, check, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const MAIL = (n, subject, html) => [
  `Message-ID: <order-${n}@client.test>`,
  "From: Alice Martin <alice@client.test>",
  "To: support@verre.test",
  `Subject: ${subject}`,
  "MIME-Version: 1.0",
  ...(html
    ? ["Content-Type: text/html; charset=utf-8", "", html]
    : ["Content-Type: text/plain; charset=utf-8", "", "Hello, please call me back about my order."]),
  "",
].join("\r\n");

before(async () => {
  assert.ok(process.env.VERRE_BIN, "set VERRE_BIN to the verre binary");
  dir = mkdtempSync(join(tmpdir(), "verre-browser-"));
  db = `sqlite://${join(dir, "verre.db")}`;

  receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      webhooks.push({ path: req.url, headers: req.headers, body, valid: verifyWebhook(SECRET, req.headers, body) });
      res.writeHead(204).end();
    });
  });
  const hookPort = await listen(receiver);
  smtp = smtpSink(mails);
  const smtpPort = await listen(smtp);

  // Three mails through the intake pipeline, with the stub models (deterministic, fast).
  const inbox = join(dir, "inbox");
  mkdirSync(inbox);
  writeFileSync(
    join(inbox, "1.eml"),
    MAIL(1, "Order 1042 is late", `<p>Hello, <b>please call me</b> about order 1042.</p>
<script>document.title = "pwned"</script><img src="http://127.0.0.1:${hookPort}/tracker.gif">
<p onclick="document.title='pwned'">Thanks, Alice</p>`),
  );
  writeFileSync(join(inbox, "2.eml"), MAIL(2, "Cheap watches", null));
  writeFileSync(join(inbox, "3.eml"), MAIL(3, "Invoice question", null));
  writeFileSync(
    join(dir, "pipeline.toml"),
    `name = "browser-test"
[extract]
model = "stub"
system = "Extract."
schema = { type = "object", required = ["customer", "summary"], properties = { customer = { type = "string" }, summary = { type = "string" } } }
[[labels]]
name = "threat_level"
values = ["low", "high"]
[[labels]]
name = "intent"
values = ["question", "complaint"]
[[route]]
name = "answer"
draft = true
actions = ["reply", "crm_ticket"]
[draft]
model = "stub"
system = "Reply."
prompt = "Reply to {{ extract.customer }}."
[[action]]
name = "reply"
kind = "reply"
subject = "Re: {{ message.subject }}"
body = "{{ draft }}"
[[action]]
name = "crm_ticket"
kind = "webhook"
url = "http://127.0.0.1:${hookPort}/hooks/crm"
payload = '{"message": {{ message.id }}, "customer": {{ extract.customer | tojson }}, "draft": {{ draft | tojson }}}'
`,
  );
  verre(["intake", "run", inbox, "--pipeline", join(dir, "pipeline.toml"), "--database", db, "--backend", "stub", "--quiet"]);
  verre(["users", "add", "alice", "--role", "reviewer", "--password-stdin", "--database", db], "correct horse battery\n");

  writeFileSync(
    join(dir, "verre.toml"),
    `[policy]
allow_jurisdictions = ["EU"]
[[delivery.webhook]]
url = "http://127.0.0.1:${hookPort}/hooks/"
jurisdiction = "EU-FR"
secret_env = "VERRE_BROWSER_WEBHOOK_SECRET"
[delivery.smtp]
host = "127.0.0.1"
port = ${smtpPort}
security = "plain"
from = "Support <support@verre.test>"
`,
  );
  server = spawn(
    process.env.VERRE_BIN,
    ["serve", "--config", join(dir, "verre.toml"), "--database", db, "--port", "0"],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, VERRE_HOME: dir, VERRE_BROWSER_WEBHOOK_SECRET: SECRET } },
  );
  const lines = createInterface({ input: server.stderr });
  const said = [];
  for await (const line of lines) {
    said.push(line);
    const m = line.match(/listening on (http:\/\/\S+)/);
    if (m) {
      baseURL = m[1];
      break;
    }
  }
  assert.ok(baseURL, `verre serve exited before listening:\n${said.join("\n")}`);
  server.stderr.resume();

  browser = await launchChromium({ viewport: { width: 1200, height: 900 } });
  page = browser.pages()[0] ?? (await browser.newPage());
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await once(server, "exit");
  }
  receiver?.close();
  smtp?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("log in, edit the draft, approve: signed webhook and reply delivered; reject; forged CSRF refused", async () => {
  // Not signed in: the login page.
  await page.goto(`${baseURL}/review`);
  assert.match(page.url(), /\/review\/login$/);
  await page.fill("input[name=name]", "alice");
  await page.fill("input[name=password]", "correct horse battery");
  await page.click("button[type=submit]");
  await page.waitForURL(`${baseURL}/review`);
  assert.ok(await page.isVisible("text=Review queue"));
  const rows = await page.locator("#queue tbody tr[data-href]").count();
  assert.equal(rows, 3, "three messages to review");

  // The message with HTML: sanitised, no script ran, nothing remote loaded.
  const remote = [];
  page.on("request", (r) => { if (!r.url().startsWith(baseURL)) remote.push(r.url()); });
  await page.click("text=Order 1042 is late");
  await page.waitForURL(/\/review\/messages\/\d+$/);
  const messageURL = page.url();
  assert.ok(await page.isVisible(".mail-html >> text=please call me"));
  assert.notEqual(await page.title(), "pwned");
  assert.equal(await page.locator(".mail-html script, .mail-html img, .mail-html [onclick]").count(), 0);
  assert.ok(await page.isVisible("#extraction >> text=threat_level"));

  // Edit the draft: a new version, and the reply follows it.
  const draft = "Dear Alice, we called the carrier: order 1042 arrives on Monday.";
  await page.fill("#draft textarea[name=body]", draft);
  await page.click("#draft button[type=submit]");
  await page.waitForURL(/notice=draft/);
  assert.ok(await page.isVisible("text=Draft saved."));
  assert.ok(await page.isVisible("text=Version history (2)"));

  // The payloads are forms generated from their schema (raw JSON is for admins); an
  // invalid value is refused after a redirect, with the error shown, and a reload posts
  // nothing again.
  assert.equal(await page.locator(".action textarea[name=payload]").count(), 0, "no raw JSON for a reviewer");
  const to = page.locator(".action form.fields input[name='p.to']");
  await to.fill("not an address");
  await page.locator(".action form.fields button[type=submit]").first().click();
  await page.waitForURL(/flash=/);
  assert.ok(await page.isVisible("text=must be one e-mail address"));
  assert.equal(await to.inputValue(), "not an address", "shown back as submitted");
  const reloaded = await page.reload();
  assert.equal(reloaded.request().method(), "GET", "a reload does not post again");
  await page.goto(messageURL);

  if (process.env.VERRE_SCREENSHOT) await page.screenshot({ path: process.env.VERRE_SCREENSHOT, fullPage: true });

  // Approve: the confirmation shows what goes where, then it is sent.
  await page.click("button.approve");
  await page.waitForURL(/\/confirm\??$/);
  assert.ok(await page.isVisible("code.target >> text=alice@client.test"));
  await page.click("#confirm");
  await page.waitForURL(/notice=approved/);
  await waitFor("the webhook", () => webhooks.length >= 1);
  await waitFor("the reply mail", () => mails.length >= 1);
  assert.equal(webhooks.length, 1);
  const hook = webhooks[0];
  assert.equal(hook.path, "/hooks/crm");
  assert.ok(hook.valid, "the webhook's signature verifies with the shared secret");
  assert.match(hook.headers["webhook-id"], /^msg_/);
  assert.equal(JSON.parse(hook.body).customer.length > 0, true);
  assert.equal(mails[0].to[0], "<alice@client.test>");
  assert.match(mails[0].data, /In-Reply-To: <order-1@client\.test>/);
  assert.ok(mails[0].data.includes("order 1042 arrives on Monday"), mails[0].data);
  assert.deepEqual(remote, [], "the page loaded nothing from elsewhere");
  // Received before recorded: reload until the page shows both deliveries sent.
  let sent = 0;
  for (let i = 0; i < 100 && sent < 2; i++) {
    await page.goto(messageURL);
    sent = await page.locator("#deliveries .status.sent").count();
    if (sent < 2) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(sent, 2, "both deliveries shown as sent");

  // Reject another with a reason.
  await page.goto(`${baseURL}/review`);
  await page.click("text=Cheap watches");
  const second = page.url();
  await page.fill("form.reject input[name=reason]", "spam");
  await page.click("form.reject button[type=submit]");
  await page.waitForURL(/notice=rejected/);
  await page.goto(second);
  assert.ok(await page.isVisible("text=rejected by alice"));

  // A forged CSRF token: 403, and the message stays undecided.
  await page.goto(`${baseURL}/review`);
  await page.click("text=Invoice question");
  const third = page.url();
  await page.click("button.approve");
  await page.waitForURL(/\/confirm\??$/);
  await page.locator("form.confirm input[name=csrf]").evaluate((el) => { el.value = "forged"; });
  const [response] = await Promise.all([page.waitForResponse((r) => r.url().endsWith("/approve")), page.click("#confirm")]);
  assert.equal(response.status(), 403);
  assert.ok(await page.isVisible("text=security token is wrong"));
  await page.goto(third);
  assert.ok(await page.isVisible("#decide button.approve"), "still undecided");
  assert.equal(webhooks.length, 1, "nothing more was sent");
});
