// Unread count in the tab title (the chat list's, of every chat) and a short
// chime for a message from someone else. The chime is synthesised with the
// Web Audio API, so there is no sound file.

let baseTitle = document.title;
let unread = 0;
let audio = null;
let lastChime = 0;

const CHIME_GAP_MS = 1500;

export function isAway() {
  return document.visibilityState === "hidden" || !document.hasFocus();
}

export function setTitle(title) {
  baseTitle = title;
  render();
}

function render() {
  document.title = unread > 0 ? `(${unread}) ${baseTitle}` : baseTitle;
}

// Unread messages of every chat but the one the reader is looking at.
export function setUnread(count) {
  if (count === unread) return;
  unread = count;
  render();
}

// Browsers only let audio start after a gesture: make the context on the first one.
function unlock() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  if (!audio) audio = new Context();
  if (audio.state === "suspended") audio.resume().catch(() => {});
}

function chime() {
  const now = Date.now();
  if (!audio || audio.state !== "running" || now - lastChime < CHIME_GAP_MS) return;
  lastChime = now;
  const start = audio.currentTime;
  [[880, 0], [1320, 0.11]].forEach(([frequency, offset]) => {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = "sine";
    osc.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, start + offset);
    gain.gain.exponentialRampToValueAtTime(0.18, start + offset + 0.015);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.25);
    osc.connect(gain).connect(audio.destination);
    osc.start(start + offset);
    osc.stop(start + offset + 0.3);
  });
}

// A message from someone else arrived where the reader is not looking.
export function incoming() {
  chime();
}

export function installNotifications() {
  for (const type of ["pointerdown", "keydown"]) {
    window.addEventListener(type, unlock, { capture: true, passive: true });
  }
}
