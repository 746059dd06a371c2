// The official `openai` npm package against a running portcullis: its
// stream helpers, which rebuild a whole answer from the stream and so
// check its shape (chat.completions.stream() threw "missing role for
// choice 0" when the first chunk named no role), plus a plain streamed
// chat call and, where the package has it, responses.stream(). Started by
// tests/openai_sdk.rs against the real binary and the fake upstream.
//
// Env: BASE_URL (portcullis, /v1 added when missing), API_KEY, MODEL
// (optional; default the first listed model).
// Prints one line per check (`ok`, `FAIL`, `skip`) and
// `openai VERSION (node): P/T checks passed, S skipped`; exits 1 on a failure.
import OpenAI from "openai";
import { VERSION } from "openai/version";
import assert from "node:assert/strict";

let base = (process.env.BASE_URL || "http://127.0.0.1:8000").replace(/\/+$/, "");
if (!base.endsWith("/v1")) base += "/v1";
const client = new OpenAI({
  baseURL: base,
  apiKey: process.env.API_KEY || "none",
  maxRetries: 0,
  timeout: 30_000,
});

class Skip extends Error {}
const passed = [], failed = [], skipped = [];
async function check(name, fn) {
  try {
    const detail = await fn();
    passed.push(name);
    console.log(`ok   ${name}: ${detail}`);
  } catch (e) {
    if (e instanceof Skip) {
      skipped.push(name);
      console.log(`skip ${name}: ${e.message}`);
    } else {
      failed.push(name);
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
  }
}

let model = process.env.MODEL;
const messages = [{ role: "user", content: "Say hello" }];

await check("models.list", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.length > 0, "empty model list");
  model = model || ids[0];
  return JSON.stringify(ids);
});

await check("chat.completions (stream)", async () => {
  const stream = await client.chat.completions.create({
    model, messages, stream: true, stream_options: { include_usage: true },
  });
  let text = "", usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(text, "no streamed content");
  assert.ok(usage && usage.total_tokens > 0, "no usage chunk");
  return JSON.stringify(text);
});

await check("chat.completions (stream, usage not asked)", async () => {
  // portcullis asks the upstream for usage itself; that chunk is not ours
  // to see when we did not ask.
  const stream = await client.chat.completions.create({ model, messages, stream: true });
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    assert.ok(chunk.choices.length > 0, "a chunk without choices reached the client");
    assert.ok(!chunk.usage, "a usage chunk reached the client");
  }
  assert.ok(chunks > 0, "no chunks");
  return `${chunks} chunks, none with usage`;
});

await check("chat.completions.stream()", async () => {
  const stream = client.chat.completions.stream({ model, messages });
  let deltas = "";
  stream.on("content", (delta) => { deltas += delta; });
  const final = await stream.finalChatCompletion();
  const msg = final.choices[0].message;
  assert.equal(msg.role, "assistant");
  assert.ok(msg.content, "no content");
  assert.equal(msg.content, deltas);
  return JSON.stringify(msg.content);
});

await check("responses.stream()", async () => {
  if (typeof client.responses?.stream !== "function") {
    throw new Skip("this package has no responses.stream()");
  }
  const stream = client.responses.stream({ model, input: "Say hello" });
  let deltas = "";
  const types = [];
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  const final = await stream.finalResponse();
  assert.equal(types[0], "response.created");
  assert.equal(types[types.length - 1], "response.completed");
  assert.ok(final.output_text, "no output_text");
  assert.equal(final.output_text, deltas);
  return `${types.length} events, ${JSON.stringify(final.output_text)}`;
});

console.log(`openai ${VERSION} (node): ${passed.length}/${passed.length + failed.length} checks passed, ${skipped.length} skipped`);
process.exit(failed.length ? 1 : 0);
