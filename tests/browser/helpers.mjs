// What the browser tests share: a Standard Webhooks check written from the spec (not
// verre's code), an SMTP sink that records each message, listening on a free loopback
// port, and launching headless Chromium the way this machine allows.

import { once } from "node:events";
import { createHmac, timingSafeEqual } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

/** Whether `headers`/`body` carry a valid `v1` signature under `secret` (`whsec_...`),
 *  with a timestamp within five minutes. */
export function verifyWebhook(secret, headers, body) {
  const id = headers["webhook-id"];
  const ts = headers["webhook-timestamp"];
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const expected = createHmac("sha256", key).update(`${id}.${ts}.${body}`).digest();
  if (Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  return (headers["webhook-signature"] ?? "").split(" ").some((entry) => {
    const [version, sig] = entry.split(",");
    const given = Buffer.from(sig ?? "", "base64");
    return version === "v1" && given.length === expected.length && timingSafeEqual(given, expected);
  });
}

/** Listen on 127.0.0.1 at a free port; returns the port. */
export async function listen(srv) {
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  return srv.address().port;
}

/** A minimal SMTP server that accepts everything and pushes `{ from, to, data }` to `mails`. */
export function smtpSink(mails) {
  return createTcpServer((sock) => {
    let buffer = "", inData = false, data = "", from = "", to = [];
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
            mails.push({ from, to, data });
            data = "";
            to = [];
            sock.write("250 queued\r\n");
          } else data += line + "\n";
          continue;
        }
        const upper = line.toUpperCase();
        if (upper.startsWith("EHLO") || upper.startsWith("HELO")) sock.write("250-sink\r\n250 8BITMIME\r\n");
        else if (upper.startsWith("MAIL FROM:")) { from = line.slice(10).trim(); sock.write("250 ok\r\n"); }
        else if (upper.startsWith("RCPT TO:")) { to.push(line.slice(8).trim()); sock.write("250 ok\r\n"); }
        else if (upper === "DATA") { inData = true; sock.write("354 go\r\n"); }
        else if (upper === "QUIT") { sock.end("221 bye\r\n"); }
        else sock.write("250 ok\r\n");
      }
    });
    sock.on("error", () => {});
  });
}

/** Debian's Chromium, headless, with a fresh profile and no background networking (this
 *  machine refuses connections to anything but loopback). */
export async function launchChromium(options = {}) {
  const profile = mkdtempSync(join(tmpdir(), "verre-chromium-"));
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.VERRE_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    ...options,
  });
}
