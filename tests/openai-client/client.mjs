// Runs one call through the official `openai` npm package and prints what the
// SDK handed back as one JSON line, for tests/e2e_openai.py to check.
//   node client.mjs <op> '<params as JSON>'
// op: models.list | models.retrieve | completions | chat
// Env: OPENAI_BASE_URL (http://127.0.0.1:PORT/v1), OPENAI_API_KEY.
// A streamed call ("stream": true) prints {"chunks": [...]}; an API error
// prints {"error": {"status", "class", "type", "param", "code", "message"}}.
import OpenAI from 'openai';

const [op, raw] = process.argv.slice(2);
const params = raw ? JSON.parse(raw) : {};
const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL,
  apiKey: process.env.OPENAI_API_KEY || 'none',
  maxRetries: 0,
  timeout: 60_000,
});

async function call() {
  switch (op) {
    case 'models.list': {
      const page = await client.models.list();
      return { data: page.data };
    }
    case 'models.retrieve':
      return await client.models.retrieve(params.id);
    case 'completions':
    case 'chat': {
      const api = op === 'chat' ? client.chat.completions : client.completions;
      const res = await api.create(params);
      if (!params.stream)
        return res;
      const chunks = [];
      for await (const chunk of res)
        chunks.push(chunk);
      return { chunks };
    }
    default:
      throw new Error(`unknown op ${op}`);
  }
}

try {
  console.log(JSON.stringify(await call()));
} catch (e) {
  if (e instanceof OpenAI.APIError) {
    console.log(JSON.stringify({
      error: {
        status: e.status ?? null,
        class: e.constructor.name,
        type: e.type ?? null,
        param: e.param ?? null,
        code: e.code ?? null,
        message: e.message,
      },
    }));
  } else {
    console.error(e);
    process.exit(2);
  }
}
