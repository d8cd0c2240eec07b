"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/completions, /v1/chat/completions,
streaming as server-sent events.

One model holds one sequence, so requests are served one at a time, first come first served
(the Model's async queue); a request waits in line while earlier ones generate. A client that
disconnects, whether waiting or streaming, is dropped from the line or has its generation
stopped at the next token. Every error is an OpenAI-shaped JSON body with a 4xx status for
anything the client sent wrong."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import pyresa
from pyresa.api import completion_from_chunks
from pyresa.server.schemas import ChatCompletionRequest, CompletionRequest


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def api_error_from(e: Exception) -> APIError:
    """The HTTP error for an exception the model layer raised."""
    if isinstance(e, pyresa.ContextFullError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, (pyresa.InvalidRequestError, pyresa.UnsupportedError)):
        return APIError(400, str(e))
    if isinstance(e, pyresa.DeviceMemoryError):
        return APIError(503, str(e), type="server_error")
    return APIError(500, f"{type(e).__name__}: {e}", type="server_error")


def _validation_message(e: RequestValidationError) -> tuple[str, str | None]:
    errors = e.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{where}: {first.get('msg')}" if where else str(first.get("msg"))) + more, where or None


class ServerState:
    def __init__(self, model, name: str, max_queue: int):
        self.model = model
        self.name = name
        self.max_queue = max_queue
        self.created = int(model.path.stat().st_mtime) if model.path.exists() else int(time.time())
        self.in_flight = 0
        self.completed = 0
        self.cancelled = 0

    def admit(self) -> None:
        if self.in_flight >= self.max_queue:
            raise APIError(503, f"the server is busy ({self.in_flight} requests in line); retry later",
                           type="server_error", code="server_busy")
        self.in_flight += 1

    def done(self, cancelled: bool) -> None:
        self.in_flight -= 1
        if cancelled:
            self.cancelled += 1
        else:
            self.completed += 1


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(model, *, model_name: str | None = None, max_queue: int = 64) -> FastAPI:
    """The app serving `model` (a pyresa.Model). `model_name` is the id /v1/models lists (default:
    the file name without .gguf); requests may name any model, they all get this one."""
    app = FastAPI(title="pyresa", version=pyresa.__version__,
                  description="OpenAI-compatible API for one GGUF model, served by pyresa")
    state = ServerState(model, model_name or model.model_name, max_queue)
    app.state.pyresa = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        message, param = _validation_message(e)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), type=kind).response()

    @app.exception_handler(pyresa.PyresaError)
    async def _pyresa(request: Request, e: pyresa.PyresaError):
        return api_error_from(e).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # a bug: say so, keep serving
        return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").response()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.name, "requests_in_flight": state.in_flight,
                "requests_completed": state.completed, "requests_cancelled": state.cancelled}

    def model_card() -> dict:
        return {"id": state.name, "object": "model", "created": state.created, "owned_by": "pyresa",
                "n_ctx": model.n_ctx}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != state.name:
            raise APIError(404, f"model {model_id!r} not found; this server has {state.name!r}",
                           type="not_found_error", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        options = _sampling_options(body)
        options.update(max_tokens=body.max_tokens, echo=body.echo, suffix=body.suffix, logprobs=body.logprobs)
        return await _serve(request, body, lambda: model.acreate_completion(body.prompt, stream=True, **options))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        options = _sampling_options(body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        options.update(max_tokens=max_tokens, logprobs=body.logprobs, top_logprobs=body.top_logprobs,
                       tools=body.tools, tool_choice=body.tool_choice, functions=body.functions,
                       function_call=body.function_call, response_format=body.response_format)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        return await _serve(request, body,
                            lambda: model.acreate_chat_completion(messages, stream=True, **options))

    async def _serve(request: Request, body, start: Callable[[], Awaitable[AsyncIterator[dict]]]):
        if body.n != 1:
            raise APIError(400, "n must be 1: pyresa generates one choice per request", param="n")
        state.admit()
        try:
            chunks = await start()  # checks the request (a bad one is a 400 before any streaming)
        except BaseException:
            state.in_flight -= 1  # refused: neither completed nor cancelled
            raise
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(_events(chunks, include_usage), sep="\n", ping=10)
        return await _collect(request, chunks)

    async def _events(chunks: AsyncIterator[dict], include_usage: bool):
        finished = False
        try:
            last = None
            async for d in chunks:
                usage = d.pop("usage", None)
                if include_usage:
                    d["usage"] = None
                last = d
                yield {"data": json.dumps(d)}
            if include_usage and last is not None:
                yield {"data": json.dumps({**last, "choices": [], "usage": usage})}
            yield {"data": "[DONE]"}
            finished = True
        except pyresa.PyresaError as e:  # after the headers went out: the error goes in the stream
            yield {"data": json.dumps(api_error_from(e).body())}
            finished = True
        finally:
            await chunks.aclose()
            state.done(cancelled=not finished)

    async def _collect(request: Request, chunks: AsyncIterator[dict]) -> Any:
        async def gather():
            return [d async for d in chunks]

        work = asyncio.ensure_future(gather())
        gone = asyncio.ensure_future(_until_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():  # the client left (or we were cancelled): stop its generation
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                await chunks.aclose()
                state.done(cancelled=True)
            gone.cancel()
        if work.cancelled():
            return Response(status_code=499)
        await chunks.aclose()
        state.done(cancelled=False)
        return completion_from_chunks(work.result())  # raises the model's error, if any

    return app


def _sampling_options(body) -> dict:
    """The request's sampling fields that were given; the rest keep the model layer's defaults."""
    names = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop",
             "presence_penalty", "frequency_penalty")
    out = {n: getattr(body, n) for n in names if getattr(body, n) is not None}
    if body.logit_bias:
        out["logit_bias"] = body.logit_bias
    return out
