"""The `alertrelay` command."""

from __future__ import annotations

import logging
import sys

import click

from streams.settings import Settings

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """alertrelay: deliver security alerts from Kafka to the tools your team uses."""


@main.command()
def worker() -> None:
    """Run a worker: consume alerts and configs, deliver to every integration.

    Configured by environment variables (README: Configuration); the broker is
    KAFKA_BOOTSTRAP_SERVERS.
    """
    import faust

    from sinks.registry import available_types
    from sinks.secretbox import SecretBox, SecretBoxError
    from streams.pipeline import build_pipeline
    from streams.topics import prepare_topics

    settings = Settings.from_env()
    try:
        box = SecretBox.from_env()
    except SecretBoxError as exc:
        raise SystemExit(f"alertrelay worker: {exc}") from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request line with its full URL, and a webhook URL is a secret.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    partitions = prepare_topics(settings, available_types())
    pipeline = build_pipeline(settings, partitions, box)
    click.echo(
        f"alertrelay worker: broker {settings.bootstrap_servers}, {partitions} partitions, "
        f"sinks {', '.join(sorted(pipeline.sinks))}, http://{settings.web_host}:"
        f"{settings.web_port}/health",
        err=True,
    )
    faust.Worker(pipeline.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


@main.group()
def keys() -> None:
    """Secret keys that seal integration secrets at rest."""


@keys.command("generate")
@click.option("--id", "kid", default="k1", show_default=True, help="key id (for rotation)")
def keys_generate(kid: str) -> None:
    """Print a new key entry for ALERTRELAY_SECRET_KEYS.

    To rotate, put the new entry first and keep the old ones after it, comma-separated:
    the first key seals, every key opens.
    """
    from sinks.secretbox import generate_key_spec

    click.echo(generate_key_spec(kid))


if __name__ == "__main__":
    sys.exit(main())
