"""`ragtune generate "prompt"`: stream one answer from the configured generator to the terminal."""

from __future__ import annotations

import click

from bot.cli.common import settings, user_errors


@click.command("generate")
@click.argument("prompt")
@click.option("--adapter", default=None, help="LoRA adapter to answer with (default: the base model).")
@click.option("--system", "system_prompt", default=None, help="System prompt.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Answer length limit in tokens.")
@click.option("--temperature", type=click.FloatRange(min=0.0, max=2.0), default=None, help="0 is greedy.")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=None)
@click.option("--stop", multiple=True, help="Stop sequence (repeatable); it is not printed.")
@click.option("--adapter-dir", "adapter_dirs", multiple=True, help="Hot-load NAME=PATH before answering (repeatable).")
@click.option("--stats/--no-stats", default=True, help="Print tokens, speed and time to first token to stderr.")
@user_errors
def generate(
    prompt: str,
    adapter: str | None,
    system_prompt: str | None,
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: tuple[str, ...],
    adapter_dirs: tuple[str, ...],
    stats: bool,
) -> None:
    """Answer PROMPT with the local model (or the OpenAI-compatible server when one is configured)."""
    from bot.llm import GeneratorUnavailable, create_generator

    generator = create_generator(settings())
    for spec in adapter_dirs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise click.BadParameter(f"{spec!r}: expected NAME=PATH", param_hint="--adapter-dir")
        generator.load_adapter(name, path)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    stream = generator.stream(
        messages, adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop
    )
    try:
        for piece in stream:
            click.echo(piece, nl=False)
    except GeneratorUnavailable as exc:
        click.echo("")
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    click.echo("")
    info = getattr(stream, "stats", None)
    if stats and info is not None:
        speed = info.completion_tokens / info.seconds if info.seconds else 0.0
        first = f"{info.time_to_first_token_s:.2f}s" if info.time_to_first_token_s is not None else "-"
        click.echo(
            f"[{generator.name} adapter={adapter or '-'}: {info.prompt_tokens} prompt + {info.completion_tokens} "
            f"tokens, {speed:.1f} tok/s, first token {first}, finish={info.finish_reason}]",
            err=True,
        )


COMMANDS = [generate]
