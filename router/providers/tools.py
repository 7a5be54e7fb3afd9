"""Tool definitions and tool calls as the two wire protocols spell them.

A request's ``tools_json`` is the OpenAI ``tools`` array: each item ``{"type": "function",
"function": {"name", "description", "parameters"}}``; the bare function object (``{"name", ...}``)
is accepted too. OpenAI-compatible tiers get the array as it is; the Anthropic client translates
each item with ``function_of``. Streamed tool calls arrive as pieces and are put together by
``ToolCallAssembler``.
"""

from __future__ import annotations

from typing import Any

from tierwise.router.types import ToolCall, ToolCallDelta


def function_of(tool: object) -> dict[str, Any] | None:
    """The function object of one tool definition (it has a non-empty ``name``), else None."""
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    source = function if isinstance(function, dict) else tool
    name = source.get("name")
    return source if isinstance(name, str) and name else None


def chosen_tool(choice: object) -> str | None:
    """The tool a JSON ``tool_choice`` names: ``{"type": "function", "function": {"name": ...}}``."""
    if not isinstance(choice, dict) or choice.get("type") != "function":
        return None
    function = function_of(choice)
    return None if function is None else str(function["name"])


class ToolCallAssembler:
    """Streamed tool-call pieces, put together by index in the order their calls began."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]

    def add(self, delta: ToolCallDelta) -> None:
        call = self._calls.setdefault(delta.index, ["", "", ""])
        call[0] = call[0] or delta.id
        call[1] = call[1] or delta.name
        call[2] += delta.arguments

    def arguments_text(self) -> str:
        """Every argument character so far: what an estimate of the output tokens counts."""
        return "".join(name + arguments for _, name, arguments in self._calls.values())

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(i, n, a or "{}") for i, n, a in self._calls.values())
