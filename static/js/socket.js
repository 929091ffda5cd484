// A room's WebSocket that keeps itself connected and resumes where it left off.
//
// Every (re)connect asks for `?since=<last seq shown>`; the server sends what
// was missed, then {"type": "ready"}, then the live stream. Dropped
// connections retry with exponential backoff and jitter, capped at 30 s, and
// so does a connection that never says `ready`.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// A timer that fires this late means the machine slept: the socket may be dead
// without knowing it (the browser cannot see the server's pings), so replace it.
const TICK_MS = 5_000;
const SLEPT_MS = 20_000;
// The server closes a socket it cannot make ready within 15 s (1011); this
// covers a connection that never even says that (a proxy that hangs).
const READY_TIMEOUT_MS = 20_000;

const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008;
const CLOSE_SLOW_CONSUMER = 4008;

export class RoomSocket {
  // handlers: since() -> seq, onFrame(frame), onState(state, detail), onRefused()
  constructor(uri, handlers) {
    this.uri = uri;
    this.handlers = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.readyTimer = null;
    this.stopped = false;
    this.live = false;
    this.retryAt = 0;
    // Back online, or back from a suspended background tab: retry now.
    this.onOnline = () => this.connectNow();
    this.onVisible = () => {
      if (document.visibilityState === "visible") this.connectNow();
    };
    window.addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.lastTick = Date.now();
    this.ticker = setInterval(() => {
      const now = Date.now();
      if (now - this.lastTick > SLEPT_MS && this.ws) this.replace();
      this.lastTick = now;
    }, TICK_MS);
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/chats/${this.uri}/?since=${this.handlers.since()}`;
  }

  start() {
    this.handlers.onState("connecting");
    this.connect();
  }

  connect() {
    this.timer = null;
    if (this.stopped) return;
    let opened = false;
    const ws = (this.ws = new WebSocket(this.url()));
    clearTimeout(this.readyTimer);
    this.readyTimer = setTimeout(() => this.giveUp(ws), READY_TIMEOUT_MS);
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === "ready") {
        clearTimeout(this.readyTimer);
        this.attempt = 0;
        this.live = true;
        this.handlers.onState("live");
      }
      this.handlers.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.live = false;
      clearTimeout(this.readyTimer);
      if (this.stopped) return;
      if (event.code === CLOSE_POLICY) {
        this.handlers.onState("refused", event.reason);
        this.handlers.onRefused(event.reason);
        return;
      }
      // A refused handshake (401/403/404) looks like any network failure here:
      // let the page ask the API why before it tries again.
      if (!opened) this.handlers.onRefused("");
      this.scheduleReconnect(event.code === CLOSE_SLOW_CONSUMER);
    };
  }

  scheduleReconnect(soon) {
    if (this.stopped || this.timer) return;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    // "Equal jitter": half the ceiling plus a random half, so clients spread out.
    const delay = soon ? 100 : ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.handlers.onState("reconnecting", { retryAt: this.retryAt, attempt: this.attempt });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  // Try now (the network came back, or the reader pressed "Retry now").
  connectNow() {
    if (this.stopped || !this.timer) return;
    clearTimeout(this.timer);
    this.handlers.onState("connecting");
    this.connect();
  }

  // Drop the current connection without waiting for its close handshake
  // (a dead one never answers) and open a new one that resumes by seq.
  replace() {
    if (this.stopped || !this.ws) return;
    const old = this.ws;
    this.ws = null;
    this.live = false;
    old.onmessage = null;
    old.close(CLOSE_NORMAL, "replaced");
    this.handlers.onState("connecting");
    this.connect();
  }

  // No `ready` in time: drop this connection and retry with backoff (the
  // attempt count is only reset by a `ready`, so a room that stays broken is
  // retried ever more slowly).
  giveUp(ws) {
    if (this.stopped || this.ws !== ws || this.live) return;
    this.ws = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.close(CLOSE_NORMAL, "no ready");
    this.scheduleReconnect(false);
  }

  send(frame) {
    if (!this.live || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  stop() {
    this.stopped = true;
    this.live = false;
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.timer);
    clearTimeout(this.readyTimer);
    clearInterval(this.ticker);
    if (this.ws) this.ws.close(CLOSE_NORMAL, "leaving");
    this.ws = null;
  }
}
