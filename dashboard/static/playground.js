// The dashboard playground: chat over the WebSocket protocol (/v1/chat/ws).
// The browser sends the session cookie and its Origin with the upgrade; the gateway
// checks both. Text is inserted with textContent only (never as HTML).
"use strict";
(function () {
  const root = document.getElementById("playground");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const log = $("pg-log"), input = $("pg-input"), form = $("pg-form");
  const send = $("pg-send"), stop = $("pg-stop"), status = $("pg-status");
  const model = $("pg-model"), clear = $("pg-clear");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
    root.dataset.wsPath;

  let ws = null, opening = null, counter = 0, current = null;
  let history = [];   // this conversation, kept in the page only

  function setStatus(text) { status.textContent = text; }
  function busy(on) { send.disabled = on; stop.disabled = !on; }

  function bubble(kind, text) {
    const div = document.createElement("div");
    div.className = "pg-msg pg-" + kind;
    const body = document.createElement("span");
    body.className = "pg-text";
    body.textContent = text;
    div.appendChild(body);
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }

  function meta(div, text) {
    const m = document.createElement("span");
    m.className = "pg-meta";
    m.textContent = text;
    div.appendChild(m);
  }

  function connect() {
    if (ws && ws.readyState === WebSocket.OPEN) return Promise.resolve(ws);
    if (opening) return opening;
    opening = new Promise((resolve, reject) => {
      const sock = new WebSocket(url);
      sock.onmessage = (ev) => {
        const msg = JSON.parse(ev.data);
        if (msg.type === "ready") {
          if (!msg.authenticated) {
            setStatus("Not signed in: reload the page.");
            reject(new Error("not authenticated"));
            return;
          }
          ws = sock;
          opening = null;
          setStatus("Connected.");
          resolve(sock);
          return;
        }
        handle(msg);
      };
      sock.onclose = () => {
        if (ws === sock) ws = null;
        opening = null;
        if (current) finish("Connection closed.", true);
        setStatus("Disconnected; it reconnects when you send.");
        reject(new Error("closed"));
      };
    });
    opening.catch(() => {});
    return opening;
  }

  function finish(note, failed) {
    if (!current) return;
    if (note) meta(current.div, note);
    if (failed) { current.div.classList.add("pg-error"); history.pop(); }
    else history.push({ role: "assistant", content: current.text });
    current = null;
    busy(false);
    input.focus();
  }

  function handle(msg) {
    if (msg.type === "pong") return;
    if (!current || msg.id !== current.id) {
      if (msg.type === "error" && msg.id === null) setStatus(msg.error.message);
      return;
    }
    if (msg.type === "delta") {
      current.text += msg.content;
      current.div.querySelector(".pg-text").textContent = current.text;
      log.scrollTop = log.scrollHeight;
    } else if (msg.type === "done") {
      const u = msg.usage;
      finish(`${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens` +
             (u.estimated ? " (estimated)" : ""), false);
      setStatus("Done.");
    } else if (msg.type === "cancelled") {
      finish("Stopped.", false);
      setStatus("Stopped.");
    } else if (msg.type === "error") {
      current.div.querySelector(".pg-text").textContent = current.text || msg.error.message;
      finish(current.text ? msg.error.message : "Error " + msg.status + ".", true);
      setStatus("Error.");
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || current) return;
    busy(true);
    let sock;
    try {
      sock = await connect();
    } catch (e) {
      busy(false);
      return;
    }
    history.push({ role: "user", content: text });
    bubble("user", text);
    input.value = "";
    const id = "pg-" + (++counter);
    current = { id: id, text: "", div: bubble("assistant", "") };
    setStatus("Generating…");
    sock.send(JSON.stringify({ type: "chat", id: id,
                               body: { model: model.value, messages: history } }));
  });

  stop.addEventListener("click", () => {
    if (current && ws) ws.send(JSON.stringify({ type: "cancel", id: current.id }));
  });

  clear.addEventListener("click", () => {
    if (current) return;
    history = [];
    log.textContent = "";
    input.focus();
  });

  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });

  connect().catch(() => {});
})();
