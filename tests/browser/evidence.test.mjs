// The evidence page in real headless Chromium, over the demo: `verre up --demo` on the
// fast SmolLM2-135M (the spans, not the model, are under test) runs the six demo mails
// through the pipeline; for every message, every extracted field on its evidence page
// either links to its highlighted words in the text the model read (and those words are
// the value, compared as the page compares them) or says it is not written there (a
// label or a summary: the model's own words); a field whose value is written in the text
// always has its span. The original PDF opens under CSP `sandbox`; the raw mail is an
// admin's download.
//
// Run: VERRE_BIN=target/debug/verre VERRE_HOME=<a home with smollm2-135m pulled>
//      node --test tests/browser/evidence.test.mjs   (tests/browser/run.sh sets it up)
// VERRE_SCREENSHOT_EVIDENCE=PATH saves a screenshot of an evidence page.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, listen, smtpSink } from "./helpers.mjs";

const QUEUE_TIMEOUT_MS = 6 * 60_000;
let home, up, browser, page, smtp;
const printed = { lines: [] };

async function waitFor(what, check, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}\n${printed.lines.slice(-30).join("\n")}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Text as the evidence finder compares it: case folded, white space collapsed. */
const words = (s) => s.toLowerCase().replace(/\s+/g, " ").trim();
/** Letters and digits only. */
const alnum = (s) => s.toLowerCase().replace(/[^\p{L}\p{N}]/gu, "");
/** The text as a whole word or phrase (not "low" in "follow"). */
const asWord = (text) =>
  new RegExp(`(^|[^\\p{L}\\p{N}])${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}($|[^\\p{L}\\p{N}])`, "u");
/** Digits without trailing zeros: "1.234,50" and 1234.5 agree. */
const digits = (s) => String(s).replace(/\D/g, "").replace(/0+$/, "");
const sameNumber = (quote, value) => !Number.isNaN(Number(value)) && digits(quote) === digits(Number(value));
/** An ISO date found as a date printed another way ("7. Mai 2014" for 2014-05-07). */
const sameYear = (quote, value) => /^\d{4}-\d\d-\d\d$/.test(value) && quote.includes(value.slice(0, 4));

before(async () => {
  assert.ok(process.env.VERRE_BIN, "set VERRE_BIN to the verre binary");
  home = mkdtempSync(join(tmpdir(), "verre-evidence-"));
  const models = process.env.VERRE_HOME && join(process.env.VERRE_HOME, "models");
  if (models && existsSync(models)) symlinkSync(models, join(home, "models"));
  const mails = [];
  smtp = smtpSink(mails);
  const smtpPort = await listen(smtp);
  const env = { ...process.env, VERRE_HOME: home };
  for (const v of ["VERRE_DATA_KEY", "VERRE_DATA_KEY_FILE", "VERRE_CRM_WEBHOOK_SECRET", "VERRE_DATABASE"]) delete env[v];
  up = spawn(
    process.env.VERRE_BIN,
    ["up", "--demo", "--model", "smollm2-135m", "--port", "0", "--smtp-relay", `127.0.0.1:${smtpPort}`],
    { stdio: ["ignore", "ignore", "pipe"], env },
  );
  createInterface({ input: up.stderr }).on("line", (l) => printed.lines.push(l));
  await waitFor("verre up to start", () =>
    printed.lines.some((l) => l.includes("Ctrl-C stops everything")) || up.exitCode !== null, 5 * 60_000);
  assert.equal(up.exitCode, null, printed.lines.join("\n"));
  const find = (re) => {
    for (const l of printed.lines) {
      const m = l.match(re);
      if (m) return m[1];
    }
    assert.fail(`verre up did not print ${re}`);
  };
  printed.review = find(/review UI\s+(http:\/\/\S+\/review)/);
  const secretsFile = find(/first-start credentials \(.*\) written to (\S+)/);
  printed.password = readFileSync(secretsFile, "utf8").match(/^admin_password = "([^"]*)"$/m)[1];
  browser = await launchChromium();
  page = browser.pages()[0] ?? (await browser.newPage());
});

after(async () => {
  await browser?.close();
  if (up && up.exitCode === null) {
    up.kill("SIGKILL");
    await once(up, "exit");
  }
  smtp?.close();
  if (home) rmSync(home, { recursive: true, force: true });
});

test("every extracted field of the demo shows its source span, or says it has none", async () => {
  await page.goto(printed.review);
  await page.fill("input[name=name]", "admin");
  await page.fill("input[name=password]", printed.password);
  await page.click("button[type=submit]");
  await page.waitForURL(printed.review);

  // Every demo mail through the pipeline (6 in the queue, none pending).
  const links = await waitFor("the six demo mails in the review queue", async () => {
    await page.goto(printed.review);
    // Both lanes of the desk's queue: to review, and nothing to send.
    const hrefs = await page
      .locator("#queue tr[data-href], #nothing-to-send tr[data-href]")
      .evaluateAll((rows) => rows.map((row) => row.getAttribute("data-href")));
    return hrefs.length >= 6 ? hrefs : null;
  }, QUEUE_TIMEOUT_MS);

  let fields = 0, spans = 0, screenshot = null;
  for (const href of links) {
    const url = new URL(`${href}/evidence`, printed.review).href;
    const extracted = await waitFor(`the extraction of ${href}`, async () => {
      await page.goto(url);
      return (await page.locator("#fields tr.field").count()) > 0;
    }, QUEUE_TIMEOUT_MS);
    assert.ok(extracted);
    const documentText = await page.locator("pre.document").innerText();
    for (const row of await page.locator("#fields tr.field").all()) {
      fields++;
      const field = (await row.getAttribute("id")).replace(/^field-/, "");
      const value = (await row.locator("td:nth-child(2) code").first().innerText()).trim();
      const source = row.locator("a.source");
      if (await source.count()) {
        spans++;
        const anchor = (await source.getAttribute("href")).slice(1);
        const mark = page.locator(`mark#${anchor}`);
        assert.equal(await mark.count(), 1, `${href} ${field}: its span is highlighted`);
        const quote = await mark.innerText();
        assert.equal(words(await source.innerText()), words(`“${quote}”`));
        assert.ok(
          words(quote) === words(value) || alnum(quote) === alnum(value) || sameNumber(quote, value) || sameYear(quote, value),
          `${href} ${field}: the span "${quote}" is the value "${value}"`,
        );
        if (screenshot === null) screenshot = url;
      } else {
        assert.ok(
          (await row.innerText()).includes("not written in the document"),
          `${href} ${field}: no span and not said so`,
        );
        // A value written in the text always has its span.
        assert.ok(
          value.length < 3 || !asWord(words(value)).test(words(documentText)),
          `${href} ${field}: "${value}" is in the text but has no span`,
        );
      }
    }
    // Why the route, with the values its rules read.
    assert.ok(await page.isVisible("#why li"), `${href}: the route is explained`);
    assert.ok(await page.isVisible("#raw-mail"), "an admin may download the raw mail");
  }
  assert.ok(fields >= 6 * 5, `every mail has its fields (${fields})`);
  assert.ok(spans > 0, "some values are copied from the text");

  // The original PDF of the demo invoice, sandboxed.
  for (const href of links) {
    await page.goto(new URL(`${href}/evidence`, printed.review).href);
    const open = page.locator("#originals a", { hasText: "open the PDF" });
    if (!(await open.count())) continue;
    const pdfURL = new URL(await open.first().getAttribute("href"), printed.review).href;
    const res = await page.request.get(pdfURL);
    assert.equal(res.status(), 200);
    assert.equal(res.headers()["content-type"], "application/pdf");
    assert.match(res.headers()["content-security-policy"], /^sandbox;/);
    assert.ok((await res.body()).subarray(0, 5).toString() === "%PDF-");
    break;
  }

  if (process.env.VERRE_SCREENSHOT_EVIDENCE && screenshot) {
    await page.goto(screenshot);
    await page.screenshot({ path: process.env.VERRE_SCREENSHOT_EVIDENCE, fullPage: true });
  }
});
