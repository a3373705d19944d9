// The ecosystem matrix, JavaScript side: the official `openai` npm client and the Vercel AI
// SDK (`ai` + `@ai-sdk/openai-compatible`) against a real `verre serve` on loopback.
// Run: VERRE_BIN=target/debug/verre node --test tests/ecosystem/clients.test.mjs
// (VERRE_TEST_MODEL picks the model, default smollm2-135m; VERRE_HOME must hold it.)

import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import OpenAI from "openai";
import { generateObject, generateText, streamText, tool } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";

const MODEL = process.env.VERRE_TEST_MODEL ?? "smollm2-135m";

let server;
let baseURL;

before(async () => {
  assert.ok(process.env.VERRE_BIN, "set VERRE_BIN to the verre binary");
  server = spawn(process.env.VERRE_BIN, ["serve", "-m", MODEL, "--port", "0"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const lines = createInterface({ input: server.stderr });
  for await (const line of lines) {
    const m = line.match(/listening on (http:\/\/\S+)/);
    if (m) {
      baseURL = m[1];
      break;
    }
  }
  assert.ok(baseURL, "verre serve exited before listening");
  server.stderr.resume();
  const deadline = Date.now() + 60_000;
  while ((await fetch(`${baseURL}/health`)).status !== 200) {
    assert.ok(Date.now() < deadline, "the model did not load in 60 s");
    await new Promise((r) => setTimeout(r, 50));
  }
});

after(async () => {
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await once(server, "exit");
  }
});

const Customer = z.object({
  name: z.string(),
  address: z.object({ street: z.string(), city: z.string() }),
});

function openai() {
  return new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: "none", maxRetries: 0 });
}

function verre(options = {}) {
  return createOpenAICompatible({ name: "verre", baseURL: `${baseURL}/v1`, apiKey: "none", ...options });
}

test("npm openai: a forced tool call comes back as one call with arguments that parse", async () => {
  const r = await openai().chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "Weather in Paris?" }],
    tools: [
      {
        type: "function",
        function: {
          name: "weather",
          description: "Current weather in a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      },
    ],
    tool_choice: "required",
    max_tokens: 64,
  });
  const calls = r.choices[0].message.tool_calls;
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  assert.equal(calls.length, 1);
  assert.equal(typeof JSON.parse(calls[0].function.arguments).city, "string");
});

test("npm openai: responses.create and a streamed response", async () => {
  const client = openai();
  const r = await client.responses.create({ model: MODEL, input: "Say hello.", max_output_tokens: 16, temperature: 0 });
  assert.ok(r.output_text.length > 0);
  const stream = await client.responses.create({
    model: MODEL,
    input: "Count to three.",
    max_output_tokens: 16,
    temperature: 0,
    stream: true,
  });
  const types = [];
  let text = "";
  let done;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.completed" || event.type === "response.incomplete") done = event.response;
  }
  assert.equal(types[0], "response.created");
  assert.ok(done, `no final event in ${types.join(",")}`);
  assert.equal(text, done.output.find((o) => o.type === "message").content[0].text);
});

test("AI SDK: generateText and streamText", async () => {
  const model = verre()(MODEL);
  const { text } = await generateText({ model, prompt: "Say hello.", maxOutputTokens: 8, temperature: 0 });
  assert.ok(text.length > 0);
  const result = streamText({ model, prompt: "Count to three.", maxOutputTokens: 8, temperature: 0 });
  let streamed = "";
  for await (const part of result.textStream) streamed += part;
  assert.ok(streamed.length > 0);
  assert.equal(streamed, await result.text);
});

test("AI SDK: generateObject with a nested schema", async () => {
  const model = verre({ supportsStructuredOutputs: true })(MODEL);
  const { object } = await generateObject({
    model,
    schema: Customer,
    prompt: "Ada Lovelace lives at 12 St James Square, London.",
    maxOutputTokens: 160,
  });
  assert.deepEqual(Object.keys(object).sort(), ["address", "name"]);
  assert.equal(typeof object.address.city, "string");
});

test("AI SDK: a required tool runs once with typed input", async () => {
  const cities = [];
  const result = await generateText({
    model: verre()(MODEL),
    prompt: "What is the weather in Rome?",
    tools: {
      weather: tool({
        description: "Current weather in a city",
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => {
          cities.push(city);
          return `sunny in ${city}`;
        },
      }),
    },
    toolChoice: "required",
    maxOutputTokens: 64,
  });
  assert.equal(result.toolCalls.length, 1);
  assert.equal(cities.length, 1);
  assert.equal(typeof cities[0], "string");
});
