"""The web wing: the Starlette application of `serve`.

app (routes, middleware, the lifespan that composes the runtime), middleware (`Guard`:
API key and body size; `HotPath`: POST /tasks on bare ASGI), auth (API key and EAS
token), responses (the one JSON response, the one error table, the handlers), params
(query parameters and the one `?queue=` resolver), tasks (the /tasks API), operator
(DLQ, probes, status, metrics), live (events, stats, dashboard, pause), eas (the PAI-EAS
routes), openapi and openapi_schemas (the document), static/ (the dashboard's files).

Imports: eas, runtime, engine (public names), the ground floor (and starlette,
sse-starlette).
"""
