// The service worker (served at /sw.js, scope /): shows Web Push notifications
// and opens the chat on click. Payloads: {type: "message", uri, seq, room,
// sender, text, url} or {type: "clear", uri, seq} (read up to seq on another
// device).
//
// A push may come twice (a server process died after the push service took it
// and before it was marked sent) or after a read cleared it: the highest seq
// shown or read per room is kept (Cache Storage outlives this worker), and a
// message at or below it shows nothing. One notification per room (tag = uri);
// a later one replaces it without sounding again (renotify false).

const SEEN = "chat-notified";

const seenKey = (uri) => `/notified/${encodeURIComponent(uri)}`;

async function seenSeq(uri) {
  const found = await (await caches.open(SEEN)).match(seenKey(uri));
  return found ? Number(await found.text()) : 0;
}

async function markSeen(uri, seq) {
  if (seq > await seenSeq(uri)) {
    await (await caches.open(SEEN)).put(seenKey(uri), new Response(String(seq)));
  }
}

async function showMessage(data) {
  if (data.seq <= await seenSeq(data.uri)) return;
  await markSeen(data.uri, data.seq);
  await self.registration.showNotification(`${data.sender} · ${data.room}`, {
    body: data.text, tag: data.uri, renotify: false,
    data: { uri: data.uri, url: data.url, seq: data.seq },
  });
}

async function clear(data) {
  if (Number.isInteger(data.seq)) await markSeen(data.uri, data.seq);
  const shown = await self.registration.getNotifications({ tag: data.uri });
  shown.forEach((note) => note.close());
}

self.addEventListener("push", (event) => {
  const data = event.data ? event.data.json() : {};
  if (data.type === "clear") event.waitUntil(clear(data));
  else if (data.type === "message") event.waitUntil(showMessage(data));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const { uri } = event.notification.data || {};
  const path = `/chats/${uri}/`;
  event.waitUntil(self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((tabs) => {
    const tab = tabs.find((client) => new URL(client.url).origin === self.location.origin);
    if (tab) {
      tab.postMessage({ type: "open", uri });
      return tab.focus();
    }
    return self.clients.openWindow(path);
  }));
});
