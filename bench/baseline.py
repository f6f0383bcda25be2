"""The baseline server: the least a FastAPI CDS Hooks endpoint can do on this machine.

One POST route at the same path as the real service reads the raw body, parses it with orjson and answers
a fixed small JSON document. It is served with exactly the uvicorn settings of ``service.cli.cmd_serve``
(uvloop, httptools, no access log, no logging config, keep-alive 5 s; one worker unless ``--workers``), so
the ratio service/baseline measures what the service adds on top of FastAPI, uvicorn and JSON parsing.

    python -m bench.baseline --port 8001
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from service.cli import uvicorn_options

JSON = "application/json"
ANSWER = orjson.dumps({"cards": []})

app = FastAPI(title="Lumbar CDS benchmark baseline")


@app.post("/cds-services/{service_id}")
async def call_service(service_id: str, request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(ANSWER, media_type=JSON)


@app.get("/readyz")
async def readyz() -> Response:
    return Response(b'{"status":"ready"}', media_type=JSON)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bench.baseline:app" if args.workers > 1 else app,  # several workers import the app themselves
        host=args.host,
        port=args.port,
        workers=args.workers,
        **uvicorn_options(),  # exactly the service's settings
    )


if __name__ == "__main__":
    main()
