"""Small gRPC plumbing shared by the Router and Admin services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

from tierwise.router.utf8_fields import invalid_utf8_field

Context = grpc.aio.ServicerContext[Any, Any]


class Undecodable:
    """A request body protobuf could not parse; ``field`` names the string field that is not
    UTF-8 when that was the cause."""

    def __init__(self, error: str, field: str | None = None) -> None:
        self.error = error
        self.field = field

    def message(self) -> str:
        if self.field is not None:
            return f"{self.field}: is not valid UTF-8"
        return f"request: cannot be decoded: {self.error}"


def safe_deserializer(request: type[Message]) -> Callable[[bytes], Any]:
    # gRPC answers a deserializer exception with a bare UNKNOWN/INTERNAL; parse
    # failures are the caller's, so they reach the handler, which says INVALID_ARGUMENT.
    def deserialize(data: bytes) -> Any:
        try:
            return request.FromString(data)
        except Exception as exc:
            field = invalid_utf8_field(request, data)
            return Undecodable(str(exc) or type(exc).__name__, field)

    return deserialize


def unary(fn: Callable[..., Any], request: type[Message], response: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=safe_deserializer(request),
        response_serializer=response.SerializeToString,
    )


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


async def reject_undecodable(request: Any, context: Context) -> None:
    if isinstance(request, Undecodable):
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.message())
