"""The `ragtune` command. Each `*_commands.py` module beside this one contributes its commands.

Discovery keeps each area's commands in its own module, and heavy imports (torch, models) stay
inside the command bodies so `ragtune --help` answers instantly.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from bot.cli.common import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="ragtune")
def cli(verbose: bool) -> None:
    """ragtune: a chatbot that answers from your documents (RAG) and in your team's voice (LoRA)."""
    setup_logging(verbose)


def _register_commands() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if module_info.name.endswith("_commands"):
            module = importlib.import_module(f"{__name__}.{module_info.name}")
            for command in getattr(module, "COMMANDS", []):
                cli.add_command(command)


_register_commands()


def main() -> None:
    cli(prog_name="ragtune")
