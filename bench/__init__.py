"""taskstream benchmarks: `python -m bench` (or `make bench`); `python -m bench --quick`.

Starts its own redis-server (AOF off, free loopback port), the service as
`python -m app serve` subprocesses, a fast stub executor (bench/stub.py) and a trivial
uvicorn endpoint (bench/trivial.py); drives them with wrk when installed (else an aiohttp
generator, bench/loadgen.py); prints the machine, the figures and the targets, and writes
bench/results/latest.json. Optional tools: wrk (apt), httpx-aiohttp and py-spy (pip).
"""
