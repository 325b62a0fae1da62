"""The serve wing: ``manage.py serve``'s HTTP API and page (``server``), the one reader shared between requests
(``shared``), and the page itself (``web/``). Nothing here writes to the store."""
