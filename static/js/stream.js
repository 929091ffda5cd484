// The user stream: one WebSocket per tab (/ws/) carrying every chat of the
// signed-in user, kept connected with backoff and jitter.
//
// Every (re)connect starts with a `chats` snapshot (the chat list), then the
// events of every chat live. The open chat is a subscription: `subscribe`
// with the last seq the page has, the events after it, `ready`, then its
// signals (presence, typing, reads). A reconnect takes a fresh snapshot and
// subscribes again with since, so nothing is lost or repeated (the timeline
// merges by seq). A subscription whose `ready` does not come within 20 s
// replaces the connection.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// A timer that fires this late means the machine slept: the socket may be dead
// without knowing it (the browser cannot see the server's pings), so replace it.
const TICK_MS = 5_000;
const SLEPT_MS = 20_000;
// The server closes a stream it cannot make ready within 15 s (1011); this
// covers a connection that never even says that (a proxy that hangs).
const READY_TIMEOUT_MS = 20_000;

const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008;
const CLOSE_SLOW_CONSUMER = 4008;

// Why the server took a chat away (`chat_gone`), as the room socket said it.
const GONE_REASONS = { left: "left the chat", removed: "removed from the chat", banned: "banned from the chat" };

// One chat's subscription: the interface the chat view talks to.
// handlers: since() -> seq, onFrame(frame), onState(state, detail), onRefused(reason)
class Subscription {
  constructor(stream, uri, handlers) {
    this.stream = stream;
    this.uri = uri;
    this.handlers = handlers;
    this.live = false; // its `ready` came on this connection
    this.readyTimer = null;
    this.stopped = false;
  }

  // Ask for the events after since; `ready` ends the catch-up.
  request() {
    clearTimeout(this.readyTimer);
    this.live = false;
    this.handlers.onState("connecting");
    if (!this.stream.sendRaw({ type: "subscribe", uri: this.uri, since: this.handlers.since() })) return;
    const { ws } = this.stream;
    this.readyTimer = setTimeout(() => this.stream.giveUp(ws), READY_TIMEOUT_MS);
  }

  onReady(frame) {
    clearTimeout(this.readyTimer);
    this.stream.attempt = 0;
    this.live = true;
    this.handlers.onState("live");
    this.handlers.onFrame(frame);
  }

  // The connection went: everything comes again after the next `ready`.
  dropped(detail) {
    clearTimeout(this.readyTimer);
    this.live = false;
    this.handlers.onState("reconnecting", detail);
  }

  // A frame of this chat's, with uri (the server adds it; the client does too).
  send(frame) {
    return this.live && this.stream.sendRaw({ ...frame, uri: this.uri });
  }

  connectNow() {
    this.stream.connectNow();
  }

  replace() {
    this.stream.replace();
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.readyTimer);
    this.stream.unsubscribe(this);
  }
}

export class UserStream {
  // handlers: onChats(chats, hasMore), onChat(chat), onGone(uri, reason), onEvent(frame)
  // (every frame of a chat, before the open chat's view gets it), onState(state, detail),
  // onRefused() (closed for policy, or the handshake failed: ask the API why).
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.snapshotTimer = null;
    this.stopped = false;
    this.open = false; // the snapshot came: chats' frames and actions flow
    this.retryAt = 0;
    this.subscriptions = new Map(); // uri -> Subscription
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
    return `${scheme}//${location.host}/ws/`;
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
    clearTimeout(this.snapshotTimer);
    this.snapshotTimer = setTimeout(() => this.giveUp(ws), READY_TIMEOUT_MS);
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
      this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.open = false;
      clearTimeout(this.snapshotTimer);
      if (this.stopped) return;
      // A refused handshake (401/403) looks like any network failure here, and
      // a policy close is a logout: let the page ask the API before retrying.
      if (!opened || event.code === CLOSE_POLICY) this.handlers.onRefused(event.reason);
      this.scheduleReconnect(event.code === CLOSE_SLOW_CONSUMER);
    };
  }

  onFrame(frame) {
    if (frame.type === "chats") {
      clearTimeout(this.snapshotTimer);
      this.open = true;
      // With a chat open, only its `ready` says the connection works.
      if (!this.subscriptions.size) this.attempt = 0;
      this.handlers.onChats(frame.chats, Boolean(frame.has_more));
      this.handlers.onState("live");
      for (const subscription of this.subscriptions.values()) subscription.request();
      return;
    }
    if (frame.type === "chat") {
      this.handlers.onChat(frame.chat);
      // A subscription the server refused before it knew of the chat: now it can.
      const waiting = this.subscriptions.get(frame.uri);
      if (waiting && !waiting.live) waiting.request();
      return;
    }
    if (frame.type === "chat_gone") {
      this.handlers.onGone(frame.uri, frame.reason);
      const subscription = this.subscriptions.get(frame.uri);
      if (subscription) {
        this.subscriptions.delete(frame.uri);
        subscription.stopped = true;
        clearTimeout(subscription.readyTimer);
        subscription.handlers.onRefused(GONE_REASONS[frame.reason] || GONE_REASONS.removed);
      }
      return;
    }
    if (!frame.uri) return;
    if (frame.type === "notifications") {
      this.handlers.onLevel(frame.uri, frame.level);
      return;
    }
    this.handlers.onEvent(frame);
    const subscription = this.subscriptions.get(frame.uri);
    if (!subscription) return;
    if (frame.type === "ready") subscription.onReady(frame);
    else if (frame.type === "error" && !frame.client_id && !subscription.live) {
      // The subscribe was refused: ask the API whether this is still a chat of ours
      // (a chat just joined may reach this stream a moment later, as `chat`).
      subscription.handlers.onRefused("");
    } else subscription.handlers.onFrame(frame);
  }

  // The open chat: its events after since, then its signals, over this socket.
  subscribe(uri, handlers) {
    const old = this.subscriptions.get(uri);
    if (old) old.stop();
    const subscription = new Subscription(this, uri, handlers);
    this.subscriptions.set(uri, subscription);
    if (this.open) subscription.request();
    else handlers.onState(this.timer ? "reconnecting" : "connecting", { retryAt: this.retryAt });
    return subscription;
  }

  unsubscribe(subscription) {
    if (this.subscriptions.get(subscription.uri) !== subscription) return;
    this.subscriptions.delete(subscription.uri);
    this.sendRaw({ type: "unsubscribe", uri: subscription.uri });
  }

  sendRaw(frame) {
    if (!this.open || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  scheduleReconnect(soon) {
    if (this.stopped || this.timer) return;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    // "Equal jitter": half the ceiling plus a random half, so clients spread out.
    const delay = soon ? 100 : ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    const detail = { retryAt: this.retryAt, attempt: this.attempt };
    this.handlers.onState("reconnecting", detail);
    for (const subscription of this.subscriptions.values()) subscription.dropped(detail);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  // Try now (the network came back, or the reader pressed "Retry now").
  connectNow() {
    if (this.stopped || !this.timer) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.handlers.onState("connecting");
    for (const subscription of this.subscriptions.values()) subscription.handlers.onState("connecting");
    this.connect();
  }

  // Drop the current connection without waiting for its close handshake
  // (a dead one never answers) and open a new one that resumes by seq.
  replace() {
    if (this.stopped || !this.ws) return;
    const old = this.ws;
    this.ws = null;
    this.open = false;
    old.onmessage = null;
    old.onclose = null;
    old.close(CLOSE_NORMAL, "replaced");
    this.handlers.onState("connecting");
    for (const subscription of this.subscriptions.values()) subscription.handlers.onState("connecting");
    this.connect();
  }

  // No snapshot or no `ready` in time: drop this connection and retry with
  // backoff (the attempt count is only reset by a `ready`, or a snapshot when
  // no chat is open, so a stream that stays broken is retried ever more slowly).
  giveUp(ws) {
    if (this.stopped || this.ws !== ws) return;
    this.ws = null;
    this.open = false;
    clearTimeout(this.snapshotTimer);
    ws.onmessage = null;
    ws.onclose = null;
    ws.close(CLOSE_NORMAL, "no ready");
    this.scheduleReconnect(false);
  }

  stop() {
    this.stopped = true;
    this.open = false;
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.timer);
    clearTimeout(this.snapshotTimer);
    clearInterval(this.ticker);
    for (const subscription of this.subscriptions.values()) clearTimeout(subscription.readyTimer);
    this.subscriptions.clear();
    if (this.ws) this.ws.close(CLOSE_NORMAL, "leaving");
    this.ws = null;
  }
}
