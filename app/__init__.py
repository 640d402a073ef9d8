"""taskstream: a durable task queue on Redis Streams.

The layout (imports point down only; checked by import-linter, `make lint`):

    cli (and __main__)   the command line and composition root
    web                  the Starlette app of `serve`
    eas                  the PAI-EAS face
    runtime              the loops and the HTTP client
    engine               the only Redis speaker
    ground floor         settings, errors, models, logs, redis_server, example_executor

Imports: nothing (this module only names the version).
"""

__version__ = "0.1.0"
