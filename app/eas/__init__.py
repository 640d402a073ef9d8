"""The PAI-EAS face: PAI-EAS services' queues on the engine's public API.

items (one data frame and its forms), store (a service's input and sink queues: this
wing's own scripts in `lua/`, its keys made by `QueueKeys.numbered`), forward (the call
strategy that POSTs input items to a target), watch (`_watch_` subscribers), hub (the
services of this process and their forwarding pools; a runtime component), proto/ (the
DataFrameListProto messages, `make proto`). The HTTP and WebSocket routes are the web
wing's (web/eas.py): they parse HTTP, and imports only point down.

Imports: engine and runtime (public names only), models, errors, settings. No Starlette,
no redis.
"""
