"""A one-agent faust app whose consumer loses one fetched record per partition, the way
faust's `getmany` does when it cuts a batch short: the record is fetched (so the broker
position moves past it) but never handed to the agent.

    python -m tests.integration.apps.dropping_reader BOOTSTRAP TOPIC APP_ID OUT DROP [plain]

Writes "partition offset" per record the agent sees to OUT. With `plain` the app reads
through faust's own consumer instead of streams.consumer.GaplessConsumer.
"""

from __future__ import annotations

import sys
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.consumer import GaplessConsumer


def dropping(base: type[Any], drop: int) -> type[Any]:
    class Dropping(base):  # type: ignore[misc, valid-type]
        async def _getmany(self, *args: Any, **kwargs: Any) -> Any:
            records = await super()._getmany(*args, **kwargs)
            done: set[TP] = self.__dict__.setdefault("dropped", set())
            for tp, batch in records.items():
                if tp not in done and any(r.offset == drop for r in batch):
                    records[tp] = [r for r in batch if r.offset != drop]
                    done.add(tp)
            return records

    return Dropping


def main(bootstrap: str, topic: str, app_id: str, out: str, drop: str, *mode: str) -> None:
    base = faust_aiokafka.Consumer if "plain" in mode else GaplessConsumer

    class Transport(faust_aiokafka.Transport):  # type: ignore[misc]
        Consumer = dropping(base, int(drop))

    class App(faust.App):  # type: ignore[misc]
        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    app = App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        web_enabled=False,
        autodiscover=False,
    )
    source = app.topic(topic, value_serializer="raw")
    sink = open(out, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    @app.agent(source)
    async def read(stream: Any) -> None:
        async for event in stream.events():
            sink.write(f"{event.message.partition} {event.message.offset}\n")

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(*sys.argv[1:])
