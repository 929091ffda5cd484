// The service worker (served at /sw.js, scope /): shows Web Push notifications
// and opens the chat on click. Payloads: {type: "message", uri, seq, room,
// sender, text, url} or {type: "clear", uri} (read on another device).

self.addEventListener("push", (event) => {
  const data = event.data ? event.data.json() : {};
  if (data.type === "clear") {
    event.waitUntil(self.registration.getNotifications({ tag: data.uri })
      .then((shown) => shown.forEach((note) => note.close())));
    return;
  }
  if (data.type !== "message") return;
  event.waitUntil(self.registration.showNotification(`${data.sender} · ${data.room}`, {
    body: data.text, tag: data.uri, data: { uri: data.uri, url: data.url },
  }));
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
