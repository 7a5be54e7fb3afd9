"""The help pages' layout: commands in panels, parameters without type labels.

typer labels every parameter of a help page with its Python type (``<bool>``, ``<str>``,
``<path>``), flags and ``--help`` included, and no setting turns that off. ``TierwiseGroup``,
the root command's class, walks the command tree once typer has built it and gives every
parameter a class whose label names a set of values (``table|csv|json``) or, for an option that
takes a value, its name (``--since SINCE``); a flag reads as a flag, a number range still shows,
and a ``metavar`` given to an option wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

if TYPE_CHECKING:
    from typer._click import Command, Context

# The root help page's panels, top to bottom.
SERVING = "Serving"
MODELS = "Models and training"
CACHE = "Cache"
REPORTS = "Reports"
DEMO = "Demo"
PANELS = (SERVING, MODELS, CACHE, REPORTS, DEMO)


def _label(param: TyperOption | TyperArgument, typed: str | None) -> str:
    """What the help shows after a parameter's name: its metavar, its choices, a placeholder, or nothing."""
    if param.metavar is not None:
        return param.metavar
    if typed is not None and param.type_descriptor.is_choice:
        label = typed.removeprefix("<").removesuffix(">")
        return label.removeprefix("list[").removesuffix("]") if label.startswith("list[") else label
    if isinstance(param, TyperOption) and not param.is_flag:
        return (param.name or "value").upper()  # takes a value: say so, as argparse does
    return ""


class PlainOption(TyperOption):
    def display_type_rich(self, ctx: Context) -> str | None:
        return _label(self, super().display_type_rich(ctx))


class PlainArgument(TyperArgument):
    def display_type_rich(self, ctx: Context) -> str | None:
        return _label(self, super().display_type_rich(ctx))


def plain_labels(command: Command) -> None:
    """Give ``command``'s parameters and those of its subcommands (recursively) plain labels."""
    help_option = command.get_help_option(typer.Context(command))  # made once, then cached
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if type(param) is TyperOption:
            param.__class__ = PlainOption
        elif type(param) is TyperArgument:
            param.__class__ = PlainArgument
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            plain_labels(sub)


def _panel_rank(command: Command) -> int:
    panel = getattr(command, "rich_help_panel", None)
    return PANELS.index(panel) if panel in PANELS else len(PANELS)


class TierwiseGroup(TyperGroup):
    """The ``tierwise`` command: subcommands listed panel by panel, parameters with plain labels."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        ordered = sorted(self.commands.items(), key=lambda item: _panel_rank(item[1]))
        self.commands = dict(ordered)
        plain_labels(self)
