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
    from streams.pipeline import build_pipeline
    from streams.topics import prepare_topics

    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request line with its full URL, and a webhook URL is a secret.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    partitions = prepare_topics(settings, available_types())
    pipeline = build_pipeline(settings, partitions)
    click.echo(
        f"alertrelay worker: broker {settings.bootstrap_servers}, {partitions} partitions, "
        f"sinks {', '.join(sorted(pipeline.sinks))}, http://{settings.web_host}:"
        f"{settings.web_port}/health",
        err=True,
    )
    faust.Worker(pipeline.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    sys.exit(main())
