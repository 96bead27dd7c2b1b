"""How the command line's help reads: options grouped in panels, arguments by their value names.

Typer groups options in panels only in its Rich help, whose markup would eat text such as
``[tool.bdprune]`` and whose layout differs between the Typer releases bdprune supports; this
command class gives the plain help the same panels on every release. Arguments' help is given to
the class, not to ``typer.Argument``: click 8.5 resets the help an older Typer stored on them.
"""

from __future__ import annotations

from typer.core import TyperCommand

# The order panels appear in; an option without a panel (--help) goes last, under "Options".
PANELS = ("Input", "Method", "Thresholds", "Output", "Repair", "Fleet", "Compute", "Options")


def _argument_name(param) -> str:
    name = param.metavar or param.name.upper()
    return name + "..." if param.nargs != 1 else name


class PanelledCommand(TyperCommand):
    """A Typer command whose help lists its arguments by value name and its options by panel
    (the ``rich_help_panel`` each option names)."""

    argument_help: dict[str, str] = {}

    def collect_usage_pieces(self, ctx) -> list[str]:
        """``[OPTIONS] CHECKPOINT...``: value names, with no type decoration."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        """An Arguments section, then one section per panel in :data:`PANELS` order."""
        arguments = [(_argument_name(p), self.argument_help.get(p.name, "")) for p in self.get_params(ctx)
                     if p.param_type_name == "argument"]
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if param.param_type_name == "option" else None
            if record is not None:
                name, text = record
                # Typer 0.16 escapes "[default: ...]" for Rich markup even where none is rendered
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append((name, text.replace("\\[", "[")))
        sections = [("Arguments", arguments)] if arguments else []
        sections += [(name, panels[name]) for name in sorted(panels, key=lambda n: PANELS.index(n) if n in PANELS else len(PANELS))]
        width = max((len(name) for _, rows in sections for name, _ in rows), default=0)
        for title, rows in sections:
            with formatter.section(title):
                formatter.write_dl([(name.ljust(width), text) for name, text in rows])  # one column for every section


def panelled(**argument_help: str) -> type[PanelledCommand]:
    """The command class for a command whose arguments (by parameter name) read ``argument_help``."""
    return type("PanelledCommand", (PanelledCommand,), {"argument_help": argument_help})
