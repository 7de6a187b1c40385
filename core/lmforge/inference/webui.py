"""The chat page ``lmforge serve --ui`` serves at ``/``.

One self-contained HTML page (no build step, no external assets: the machine it
runs on may have no network) that talks to the server's own
``/v1/chat/completions`` with ``stream: true`` and renders the answer as it
arrives. Settings: model, system prompt, temperature, top-p, max tokens; history
is kept in the page and sent with every turn; "Clear" forgets it.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lmforge chat</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; color: #1d232a; }
  aside { width: 260px; padding: 16px; background: #f3f5f7; border-right: 1px solid #d8dde3; overflow-y: auto; }
  aside label { display: block; font-size: 13px; margin: 12px 0 4px; color: #4a5560; }
  aside input, aside select, aside textarea { width: 100%; box-sizing: border-box; font: inherit; padding: 4px; }
  main { flex: 1; display: flex; flex-direction: column; }
  #log { flex: 1; overflow-y: auto; padding: 16px 24px; }
  .msg { max-width: 760px; margin: 8px 0; padding: 10px 14px; border-radius: 10px; white-space: pre-wrap; }
  .user { background: #dbeafe; margin-left: auto; }
  .assistant { background: #eef1f4; }
  .error { background: #fde2e2; color: #8a1c1c; }
  form { display: flex; gap: 8px; padding: 12px 24px; border-top: 1px solid #d8dde3; }
  #prompt { flex: 1; font: inherit; padding: 8px; resize: none; }
  button { font: inherit; padding: 8px 14px; }
  h1 { font-size: 18px; margin: 0 0 8px; }
</style>
</head>
<body>
<aside>
  <h1>lmforge chat</h1>
  <label for="model">Model</label>
  <select id="model">__OPTIONS__</select>
  <div id="keybox" style="display:__KEYDISPLAY__">
    <label for="apikey">API key</label>
    <input id="apikey" type="password" autocomplete="off">
  </div>
  <label for="system">System prompt</label>
  <textarea id="system" rows="4" placeholder="optional"></textarea>
  <label for="temperature">Temperature</label>
  <input id="temperature" type="number" min="0" max="2" step="0.1" value="0">
  <label for="top_p">Top-p</label>
  <input id="top_p" type="number" min="0.01" max="1" step="0.05" value="1">
  <label for="max_tokens">Max new tokens</label>
  <input id="max_tokens" type="number" min="1" step="1" value="128">
  <p><button id="clear" type="button">Clear history</button></p>
</aside>
<main>
  <div id="log" aria-live="polite"></div>
  <form id="form">
    <textarea id="prompt" rows="2" placeholder="Type a message; Enter sends, Shift+Enter is a new line"></textarea>
    <button id="send" type="submit">Send</button>
  </form>
</main>
<script>
const MODELS = __MODELS__;
let history = [];
const log = document.getElementById("log");

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

async function send(text) {
  const system = document.getElementById("system").value.trim();
  const messages = (system ? [{role: "system", content: system}] : []).concat(history, [{role: "user", content: text}]);
  bubble("user", text);
  const out = bubble("assistant", "");
  const headers = {"Content-Type": "application/json"};
  const key = document.getElementById("apikey").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  const body = {
    model: document.getElementById("model").value, messages: messages, stream: true,
    temperature: parseFloat(document.getElementById("temperature").value),
    top_p: parseFloat(document.getElementById("top_p").value),
    max_tokens: parseInt(document.getElementById("max_tokens").value, 10),
  };
  let answer = "";
  try {
    const resp = await fetch("/v1/chat/completions", {method: "POST", headers: headers, body: JSON.stringify(body)});
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({error: {message: resp.statusText}}));
      throw new Error(err.error ? err.error.message : resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        const delta = msg.choices.length ? msg.choices[0].delta : {};
        if (delta.content) { answer += delta.content; out.textContent = answer; log.scrollTop = log.scrollHeight; }
      }
    }
    out.dataset.done = "1";
    history.push({role: "user", content: text}, {role: "assistant", content: answer});
  } catch (e) {
    out.className = "msg error";
    out.textContent = "error: " + e.message;
    out.dataset.done = "1";
  }
}

document.getElementById("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const box = document.getElementById("prompt");
  const text = box.value.trim();
  if (!text) return;
  box.value = "";
  send(text);
});
document.getElementById("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); document.getElementById("form").requestSubmit(); }
});
document.getElementById("clear").addEventListener("click", () => { history = []; log.innerHTML = ""; });
</script>
</body>
</html>
"""


def page(models: list[str], *, auth: bool) -> str:
    """The chat page for the served model names; shows an API-key box when the server wants one."""
    options = "".join(f'<option value="{html.escape(m)}">{html.escape(m)}</option>' for m in models)
    return (_PAGE.replace("__OPTIONS__", options).replace("__MODELS__", json.dumps(models))
            .replace("__KEYDISPLAY__", "block" if auth else "none"))
