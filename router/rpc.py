"""Small gRPC plumbing shared by the Router and Admin services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc

Context = grpc.aio.ServicerContext[Any, Any]


class Undecodable:
    """A request body protobuf could not parse (for example invalid UTF-8 in a string)."""

    def __init__(self, error: str) -> None:
        self.error = error


def safe_deserializer(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # gRPC answers a deserializer exception with a bare UNKNOWN/INTERNAL; parse
    # failures are the caller's, so they reach the handler, which says INVALID_ARGUMENT.
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:
            return Undecodable(str(exc) or type(exc).__name__)

    return deserialize


def unary(fn: Callable[..., Any], request: Any, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=safe_deserializer(request.FromString),
        response_serializer=response.SerializeToString,
    )


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


async def reject_undecodable(request: Any, context: Context) -> None:
    if isinstance(request, Undecodable):
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"request: cannot be decoded: {request.error}")
