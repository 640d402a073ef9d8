"""The runtime: the loops of a process and its HTTP client to executors and receivers.

aio (backoff, Redis watch, the one race helper, the backoff formula), wire (the
keep-alive HTTP/1.1 client), executors (the executor pool and its call strategy),
consumers (consumer pools), pull (the pull workers' long-poll), callbacks (the callback
sender), metrics (`Metrics`, the engine's observer, and the exposition), burst (a burst
worker's stop condition), drain (the not-ready phase of a graceful stop), runtime
(`Runtime`: start/stop of it all).

Imports: engine (public names), models, errors, settings. No Starlette, no redis.
"""
