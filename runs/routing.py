# Websocket routes for the live pages; the consumers arrive with the live pages (issue 4).
websocket_urlpatterns = []
