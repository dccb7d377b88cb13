"""Fan-out and fan-in: one price feed, several readers, one trader waiting on two inputs.

* ``BroadcastChannel`` gives every subscriber every tick. With
  ``on_full="drop_oldest"`` a slow reader loses its oldest ticks instead of
  holding the feed back, and its ``stats().dropped`` says how many.
* ``select`` lets the trader wait on the feed and on a command channel at
  once, taking exactly one message from whichever is ready first.
* ``merge`` reads the readers' reports as one stream, ending when both are done.

Run it with ``python examples/price_feed.py``.
"""

import asyncio

from spark.nodes.channels import (
    BroadcastChannel,
    ChannelClosed,
    ChannelMessage,
    InMemoryChannel,
    merge,
    select,
)

TICKS = 20


async def main() -> dict[str, int]:
    feed = BroadcastChannel("prices", maxsize=4, on_full="drop_oldest")
    chart, audit, trader_feed = (feed.subscribe(name) for name in ("chart", "audit", "trader"))
    commands = InMemoryChannel("commands")
    chart_reports, audit_reports = InMemoryChannel("chart-reports"), InMemoryChannel("audit")

    async def read(subscription, reports, slowness):
        seen = 0
        async for _tick in subscription:  # ends when the feed closes and it has drained
            seen += 1
            for _ in range(slowness):
                await asyncio.sleep(0)
        stats = subscription.stats()
        await reports.send(ChannelMessage((subscription.name, seen, stats.dropped)))
        reports.close()

    async def trade():
        trades = 0
        while True:
            channel, message = await select(trader_feed, commands)
            if channel is commands and message.payload == "stop":
                trader_feed.close()  # unsubscribe: the feed no longer keeps ticks for us
                print(f"trader: stopped on command after {trades} trades")
                return trades
            if channel is trader_feed and message.payload % 5 == 0:
                trades += 1

    readers = [
        asyncio.create_task(read(chart, chart_reports, slowness=0)),
        asyncio.create_task(read(audit, audit_reports, slowness=6)),
    ]
    trader = asyncio.create_task(trade())

    for price in range(1, TICKS + 1):
        await feed.send(ChannelMessage(price))
        await asyncio.sleep(0)  # a tick at a time: the fast readers keep up
        if price == 12:
            await commands.send(ChannelMessage("stop"))
            await asyncio.sleep(0)  # the trader sees the command before tick 13
    feed.close()

    summary = {}
    async for report in merge(chart_reports, audit_reports):
        name, seen, dropped = report.payload
        print(f"{name}: saw {seen} of {TICKS} ticks, dropped {dropped}")
        summary[name] = seen
    await asyncio.gather(*readers)
    summary["trades"] = await trader
    try:
        await select(chart, audit)
    except ChannelClosed:
        print("every subscription is closed and drained")
    return summary


if __name__ == "__main__":
    asyncio.run(main())
