// Fetch helpers: JSON errors from the server ({"error": {"message", "param"}}) become Errors.
export class ApiError extends Error {
  constructor(message: string, public status: number, public param: string | null) { super(message); }
}

async function check(r: Response): Promise<Response> {
  if (r.ok) return r;
  let msg = `${r.status} ${r.statusText}`, param: string | null = null;
  try {
    const j = await r.json();
    if (j?.error?.message) { msg = j.error.message; param = j.error.param ?? null; }
  } catch { /* not JSON */ }
  throw new ApiError(msg, r.status, param);
}

export async function getJSON<T>(url: string): Promise<T> {
  return (await check(await fetch(url))).json();
}

export async function postJSON<T>(url: string, body: unknown): Promise<T> {
  const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return (await check(r)).json();
}

// Server-sent events over a POST (EventSource only does GET): yields {event, data}.
export async function* postSSE(url: string, body: unknown, signal?: AbortSignal): AsyncGenerator<{ event: string; data: string }> {
  const r = await check(await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal }));
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      yield { event, data };
    }
  }
}
