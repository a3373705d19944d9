// The official `openai` npm client streaming from a real `verre serve` on loopback.
// Run: VERRE_BIN=target/debug/verre node --test tests/openai/stream.mjs
// (VERRE_TEST_MODEL picks the model, default smollm2-135m; VERRE_HOME must hold it.)

import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import OpenAI from "openai";

const MODEL = process.env.VERRE_TEST_MODEL ?? "smollm2-135m";
const MESSAGES = [{ role: "user", content: "What is 2+2?" }];

let server;
let client;

before(async () => {
  assert.ok(process.env.VERRE_BIN, "set VERRE_BIN to the verre binary");
  server = spawn(process.env.VERRE_BIN, ["serve", "-m", MODEL, "--port", "0"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const lines = createInterface({ input: server.stderr });
  let baseURL;
  for await (const line of lines) {
    const m = line.match(/listening on (http:\/\/\S+)/);
    if (m) {
      baseURL = m[1];
      break;
    }
  }
  assert.ok(baseURL, "verre serve exited before listening");
  server.stderr.resume(); // keep draining so the server never blocks on the pipe
  const deadline = Date.now() + 60_000;
  while ((await fetch(`${baseURL}/health`)).status !== 200) {
    assert.ok(Date.now() < deadline, "the model did not load in 60 s");
    await new Promise((r) => setTimeout(r, 50));
  }
  client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: "none", maxRetries: 0 });
});

after(async () => {
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await once(server, "exit");
  }
});

test("chat streams deltas, a finish reason and the usage", async () => {
  const whole = await client.chat.completions.create({
    model: MODEL,
    messages: MESSAGES,
    max_tokens: 24,
    temperature: 0,
  });
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: MESSAGES,
    max_tokens: 24,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    text += choice.delta.content ?? "";
    finish = choice.finish_reason ?? finish;
  }
  assert.ok(chunks > 2, `only ${chunks} chunks`);
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.deepEqual(usage, whole.usage);
});

test("a stream can be abandoned midway", async () => {
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: MESSAGES,
    max_tokens: 2000,
    stream: true,
    ignore_eos: true,
  });
  let n = 0;
  for await (const _ of stream) {
    if (++n === 3) break; // leaving the loop aborts the request
  }
  assert.equal(n, 3);
  // The server is still fine afterwards.
  const models = await client.models.list();
  assert.ok(models.data.some((m) => m.id === MODEL));
});

test("responses: create, and a stream whose final response matches its deltas", async () => {
  const whole = await client.responses.create({
    model: MODEL,
    input: "What is 2+2?",
    max_output_tokens: 200,
    temperature: 0,
  });
  assert.equal(whole.object, "response");
  assert.equal(whole.status, "completed");
  assert.ok(whole.output_text.length > 0);

  const stream = client.responses.stream({
    model: MODEL,
    input: "What is 2+2?",
    max_output_tokens: 200,
    temperature: 0,
  });
  const kinds = [];
  let text = "";
  for await (const event of stream) {
    assert.equal(event.sequence_number, kinds.length);
    kinds.push(event.type);
    if (event.type === "response.output_text.delta") text += event.delta;
  }
  const final = await stream.finalResponse();
  assert.equal(kinds[0], "response.created");
  assert.equal(kinds.at(-1), "response.completed");
  assert.equal(text, final.output_text);
  assert.equal(final.output_text, whole.output_text, "the same greedy answer");
});
