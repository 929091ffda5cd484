// A room's live signals on the page: who is online, who is typing, who has read
// what. The server sends them to the open chat's subscription only: the
// whole presence after `ready`, then diffs; the whole typing set on each change;
// each member's read position as it rises. None of them is kept in the browser.

const TYPING_EVERY_MS = 2_000; // the server expects a typing frame at most this often
const READ_DEBOUNCE_MS = 400;

// "Alice is typing…", "Alice and Bob are typing…", "Several people are typing…".
export function typingText(names) {
  if (!names.length) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "Several people are typing…";
}

export function seenByText(names) {
  if (!names.length) return "";
  if (names.length <= 3) return `Seen by ${names.join(", ")}`;
  return `Seen by ${names.slice(0, 2).join(", ")} and ${names.length - 2} others`;
}

export class RoomSignals {
  // send(frame) -> bool sends on the chat's subscription; onChange(what) redraws
  // ("presence", "typing" or "read").
  constructor(uri, me, reads, { send, markRead, onChange }) {
    this.uri = uri;
    this.me = me;
    this.send = send;
    this.markReadOverHttp = markRead;
    this.onChange = onChange;
    this.online = new Map(); // user id -> username
    this.typing = []; // usernames, the reader excluded
    this.reads = new Map(Object.entries(reads || {})); // username -> seq
    this.typingSentAt = 0;
    this.readTimer = null;
    this.wantRead = 0;
  }

  get myRead() {
    return this.reads.get(this.me.username) || 0;
  }

  onFrame(frame) {
    if (frame.type === "presence") this.onPresence(frame);
    else if (frame.type === "typing") this.onTyping(frame);
    else if (frame.type === "read") this.onRead(frame);
    else return false;
    return true;
  }

  onPresence(frame) {
    if (frame.users) this.online = new Map(frame.users.map((u) => [u.id, u.username]));
    for (const user of frame.joined || []) this.online.set(user.id, user.username);
    for (const user of frame.left || []) this.online.delete(user.id);
    this.onChange("presence");
  }

  onTyping(frame) {
    this.typing = frame.users.filter((name) => name !== this.me.username);
    this.onChange("typing");
  }

  onRead(frame) {
    if (frame.seq <= (this.reads.get(frame.user) || 0)) return;
    this.reads.set(frame.user, frame.seq);
    this.onChange("read");
  }

  // A member's message: they have read what came before it (the server sends
  // no read frame for that).
  posted(message) {
    if (message.seq <= (this.reads.get(message.user.username) || 0)) return;
    this.reads.set(message.user.username, message.seq);
    this.onChange("read");
  }

  // The stream dropped: presence and typing will come again after `ready`.
  reset() {
    this.online.clear();
    this.typing = [];
    this.typingSentAt = 0;
    this.onChange("presence");
    this.onChange("typing");
  }

  isOnline(userId) {
    return this.online.has(userId);
  }

  // The composer changed: typing while it holds text (at most every 2 s), a
  // stop when it is emptied.
  composing(hasText) {
    const now = Date.now();
    if (hasText && now - this.typingSentAt >= TYPING_EVERY_MS) {
      if (this.send({ type: "typing" })) this.typingSentAt = now;
    } else if (!hasText && this.typingSentAt) {
      this.typingSentAt = 0;
      this.send({ type: "typing", stop: true });
    }
  }

  // A message was sent: the server ends the typing itself.
  sent() {
    this.typingSentAt = 0;
  }

  // The reader has seen up to seq (the room is visible): tell the server,
  // debounced, and only when it is news.
  read(seq) {
    if (seq <= this.myRead || seq <= this.wantRead) return;
    this.wantRead = seq;
    clearTimeout(this.readTimer);
    this.readTimer = setTimeout(() => this.sendRead(), READ_DEBOUNCE_MS);
  }

  sendRead() {
    const seq = this.wantRead;
    if (seq <= this.myRead) return;
    if (!this.send({ type: "read", seq })) this.markReadOverHttp(seq).catch(() => {});
  }

  stop() {
    clearTimeout(this.readTimer);
    if (this.wantRead > this.myRead) this.markReadOverHttp(this.wantRead).catch(() => {});
  }
}
