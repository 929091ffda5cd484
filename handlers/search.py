"""Search: the messages of my chats that match a query (GET /api/search/)."""

from __future__ import annotations

from chat import search
from handlers import models
from handlers.base import ApiHandler, endpoint


class SearchHandler(ApiHandler):
    @endpoint('Messages of my chats (the ones I am a member of now) that match q: words '
              '(all must match), "a phrase", -excluded; newest first, or best first with '
              'sort=relevance', "searchMessages", query=models.SearchQuery,
              response=models.SearchPage, errors=(403, 503))
    async def get(self, query: models.SearchQuery) -> None:
        user = self.require_user()
        config = self.services.config
        parsed = search.parse(query.q, config.search_language)
        filters = search.Filters(uri=query.uri, username=query.from_, after=query.after,
                                 before=query.before)
        page = await self.services.search.search(user["id"], parsed, filters, query.limit,
                                                 query.cursor, query.sort == "relevance")
        self.reply({"results": page.results, "next": page.next, "partial": page.partial})
