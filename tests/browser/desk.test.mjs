// The review desk with the keyboard alone, on `verre up --demo`'s six demo mails (the stub
// intake models, so the queue fills in seconds): the queue is ordered by priority with the
// reasons shown, j/k move, / searches, and a reviewer clears all six mails, each with at most
// six keystrokes including opening it (counted here); every approval goes through the
// confirmation that shows what is sent where; the decision is focused when a message opens,
// e/r reach the payload and the reason; a filed mail is undone with `u`.
//
// Run: VERRE_BIN=target/debug/verre VERRE_HOME=<a home with smollm2-135m and minilm-l6>
//      node --test tests/browser/desk.test.mjs   (tests/browser/run.sh sets it all up)
// VERRE_SCREENSHOTS=docs saves review-queue.png, review-message.png, review-confirm.png there.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, listen, smtpSink } from "./helpers.mjs";

const MAX_KEYS_PER_MAIL = 6;
let home, up, browser, page, review, password;
const printed = [];
const webhooks = [];
const mails = [];
let receiver, smtp;

async function waitFor(what, check, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}\n--- verre up said:\n${printed.slice(-40).join("\n")}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

const shot = async (name) => {
  if (process.env.VERRE_SCREENSHOTS) await page.screenshot({ path: join(process.env.VERRE_SCREENSHOTS, name), fullPage: true });
};

before(async () => {
  assert.ok(process.env.VERRE_BIN, "set VERRE_BIN to the verre binary");
  home = mkdtempSync(join(tmpdir(), "verre-desk-"));
  const models = process.env.VERRE_HOME && join(process.env.VERRE_HOME, "models");
  if (models && existsSync(models)) symlinkSync(models, join(home, "models"));
  receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      webhooks.push({ path: req.url, body });
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
    ["up", "--demo", "--port", "0", "--model", "smollm2-135m", "--intake-backend", "stub",
      "--crm-webhook-url", `http://127.0.0.1:${hookPort}/hooks/crm`, "--smtp-relay", `127.0.0.1:${smtpPort}`],
    { stdio: ["ignore", "ignore", "pipe"], env },
  );
  createInterface({ input: up.stderr }).on("line", (line) => printed.push(line));
  await waitFor("verre up to start", () => printed.some((l) => l.includes("Ctrl-C stops everything")) || up.exitCode !== null, 5 * 60_000);
  assert.equal(up.exitCode, null, `verre up exited:\n${printed.join("\n")}`);
  review = printed.map((l) => l.match(/review UI\s+(http:\/\/\S+\/review)/)).find(Boolean)?.[1];
  const secrets = printed.map((l) => l.match(/first-start credentials \(.*\) written to (\S+)/)).find(Boolean)?.[1];
  assert.ok(review && secrets, printed.join("\n"));
  password = readFileSync(secrets, "utf8").match(/^admin_password = "([^"]*)"$/m)[1];
  browser = await launchChromium({ viewport: { width: 1280, height: 900 } });
  page = browser.pages()[0] ?? (await browser.newPage());
});

after(async () => {
  await browser?.close();
  if (up && up.exitCode === null) {
    up.kill("SIGINT");
    await once(up, "exit");
  }
  receiver?.close();
  smtp?.close();
  if (home) rmSync(home, { recursive: true, force: true });
});

const queued = () => page.locator("#queue tr[data-href], #nothing-to-send tr[data-href]");

test("the six demo mails cleared with the keyboard alone, at most six keys each", async () => {
  await page.goto(review);
  await page.fill("input[name=name]", "admin");
  await page.fill("input[name=password]", password);
  await page.click("button[type=submit]");
  await page.waitForURL(review);
  await waitFor("the six demo mails to reach review", async () => {
    await page.goto(review);
    return (await queued().count()) === 6;
  }, 5 * 60_000);

  // Ranked, highest priority first in each lane, with the reasons. (The stub models pick
  // labels at random; the order on real labels is checked in crates/server/tests/review.rs.)
  for (const lane of ["#queue", "#nothing-to-send"]) {
    const scores = await page.locator(`${lane} td.priority strong`).allInnerTexts();
    const sorted = [...scores].map(Number).sort((x, y) => y - x);
    assert.deepEqual(scores.map(Number), sorted, `${lane} by priority`);
  }
  const order = await queued().evaluateAll((rows) => rows.map((r) => r.innerText));
  const breach = order.findIndex((t) => t.includes("patient records exposed"));
  assert.ok(breach >= 0, order.join("\n---\n"));
  assert.match(order[breach], /deadline: “within 72 hours”/);
  assert.match(order[breach], /platinum customer/);
  // "Received" is the mail's Date header (Fri, 27 Nov 2026 06:58:00 +0100).
  assert.match(order[breach], /2026-11-27 05:58 UTC/);
  await shot("review-queue.png");

  // j/k move the selection; / goes to the search, Escape leaves it.
  const selected = () => page.locator("tr.selected").getAttribute("data-href");
  const first = await selected();
  await page.keyboard.press("j");
  assert.notEqual(await selected(), first);
  await page.keyboard.press("k");
  assert.equal(await selected(), first);
  await page.keyboard.press("/");
  assert.equal(await page.evaluate(() => document.activeElement.id), "search");
  await page.keyboard.type("kliniek");
  await page.keyboard.press("Enter");
  await page.waitForURL(/q=kliniek/);
  assert.equal(await queued().count(), 1);
  await page.goto(review);

  // On a message the decision comes first: focused as the page opens (no Tab needed); `e`
  // edits the first payload field, `r` goes to the rejection's reason, Escape leaves a
  // field, j/k move to the next/previous message in the queue's order.
  const firstHref = await page.locator("tr.selected").getAttribute("data-href");
  await page.goto(new URL(firstHref, review).href);
  const focused = () => page.evaluate(() => document.activeElement.id || document.activeElement.name);
  assert.equal(await focused(), "approve");
  await page.keyboard.press("e");
  assert.equal(await focused(), "p.to");
  await page.keyboard.press("Escape");
  await page.keyboard.press("r");
  assert.equal(await focused(), "reject-reason");
  await page.keyboard.press("Escape");
  await page.keyboard.press("j");
  await page.waitForURL((u) => u.pathname !== firstHref && /\/review\/messages\/\d+$/.test(u.pathname));
  await page.keyboard.press("k");
  await page.waitForURL((u) => u.pathname === firstHref);
  await page.goto(review);

  // Clear the queue: Enter opens the selected (most urgent) mail, `a` shows what would be
  // sent where, Enter confirms. Every key counted.
  const perMail = [];
  for (let n = 0; n < 6; n++) {
    let keys = 0;
    const press = async (key) => {
      keys++;
      await page.keyboard.press(key);
    };
    await press("Enter");
    await page.waitForURL(/\/review\/messages\/\d+$/);
    if (n === 0) await shot("review-message.png");
    await press("a");
    await page.waitForURL(/\/confirm\??$/);
    const sends = await page.locator("code.target").allInnerTexts();
    const nothing = await page.isVisible("text=Nothing will be sent");
    assert.ok(nothing || sends.length > 0, "the confirmation says what goes where");
    if (n === 0) await shot("review-confirm.png");
    await press("Enter");
    await page.waitForURL(/\/review\?notice=(approved|filed)/);
    assert.ok(!(await page.isVisible("p.error")), await page.content());
    perMail.push(keys);
  }
  console.log(`keystrokes per mail: ${perMail.join(", ")}`);
  assert.ok(perMail.every((k) => k <= MAX_KEYS_PER_MAIL), `keystrokes per mail: ${perMail}`);
  assert.equal(await queued().count(), 0, "the queue is clear");

  // The last one was filed (nothing to send, so nothing for the worker): `u` undoes it.
  await page.keyboard.press("u");
  await page.waitForURL(/notice=undone/);
  assert.ok(await page.isVisible("text=The decision is undone"));
  await page.keyboard.press("a");
  await page.waitForURL(/\/confirm\??$/);
  await page.keyboard.press("Enter");
  await page.waitForURL(/notice=filed/);

  // What was approved was delivered.
  await waitFor("the approved webhooks", () => webhooks.length >= 1, 60_000);
  assert.ok(webhooks.every((w) => w.path === "/hooks/crm"));
});
