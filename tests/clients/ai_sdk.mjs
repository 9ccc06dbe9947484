// Drives Switchboard with the Vercel AI SDK (OpenAI provider, Responses API), run by tests/e2e/test_clients.py.
// Env: SWITCHBOARD_URL (no trailing /v1), SWITCHBOARD_KEY, optional PROMPT and TOOL_PROMPT. Prints one JSON line:
// {"generate": {...}, "stream": {...}, "tools": {...}}; exits non-zero on any error.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const prompt = process.env.PROMPT ?? "hello from the ai sdk";
const toolPrompt = process.env.TOOL_PROMPT ?? "What is the weather?";
const openai = createOpenAI({
  baseURL: process.env.SWITCHBOARD_URL + "/v1",
  apiKey: process.env.SWITCHBOARD_KEY,
});
const common = { maxRetries: 0, abortSignal: AbortSignal.timeout(60_000) };

async function generate() {
  const result = await generateText({ ...common, model: openai.responses("fake/echo"), prompt });
  return {
    text: result.text,
    finishReason: result.finishReason,
    usage: result.usage,
    responseId: result.response?.id ?? null,
  };
}

async function stream() {
  const errors = [];
  const result = streamText({
    ...common,
    model: openai.responses("fake/echo"),
    prompt,
    onError: ({ error }) => errors.push(String(error?.stack ?? error)),
  });
  const deltas = [];
  for await (const delta of result.textStream) deltas.push(delta);
  if (errors.length) throw new Error(`streamText failed: ${errors.join("\n")}`);
  return { deltas, text: await result.text, finishReason: await result.finishReason, usage: await result.usage };
}

async function tools() {
  const executed = [];
  const result = await generateText({
    ...common,
    model: openai.responses("fake/tool-call"),
    prompt: toolPrompt,
    tools: {
      get_weather: tool({
        description: "Get the weather",
        inputSchema: z.object({ x: z.number() }),
        execute: async (input) => {
          executed.push(input);
          return "sunny";
        },
      }),
    },
    stopWhen: stepCountIs(3),
  });
  return {
    text: result.text,
    finishReason: result.finishReason,
    executed,
    steps: result.steps.map((step) => ({
      finishReason: step.finishReason,
      text: step.text,
      toolCalls: step.toolCalls.map((c) => ({ toolCallId: c.toolCallId, toolName: c.toolName, input: c.input })),
      toolResults: step.toolResults.map((r) => ({ toolCallId: r.toolCallId, output: r.output })),
    })),
  };
}

try {
  const out = { generate: await generate(), stream: await stream(), tools: await tools() };
  process.stdout.write(JSON.stringify(out) + "\n");
} catch (error) {
  process.stderr.write(`ai_sdk.mjs failed: ${error?.stack ?? error}\n`);
  for (const key of ["url", "statusCode", "responseBody", "requestBodyValues"]) {
    if (error?.[key] !== undefined) process.stderr.write(`${key}: ${JSON.stringify(error[key])}\n`);
  }
  process.exitCode = 1;
}
