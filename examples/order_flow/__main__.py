"""``python -m examples.order_flow``: run the order flow and print where every order went.

Exit code 0 when the flow behaved as designed (every order completed or lost where the plan loses
it), 1 when it did not, 2 when no broker could be found.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from rich.console import Console

from broker_harness import BrokerUnavailable
from broker_harness.broker import broker_session, redacted
from examples.order_flow.analysis import Fate
from examples.order_flow.report import render
from examples.order_flow.runner import run_flow


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.order_flow",
        description="Run shop-api -> srm-api -> mes over RabbitMQ and show where each order went.",
    )
    parser.add_argument(
        "--orders", type=int, default=20, help="how many orders (default 20, at least 4)"
    )
    parser.add_argument(
        "--consumer-context",
        choices=("parent", "link"),
        default="parent",
        help="parent: one trace per order; link: a trace per hop, tied by links (default parent)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for every order"
    )
    parser.add_argument(
        "--show-logs", action="store_true", help="print the services' logs after the report"
    )
    parser.add_argument(
        "--no-container",
        action="store_true",
        help="do not start a RabbitMQ container when no broker answers",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    try:
        with broker_session(allow_container=not args.no_container) as broker:
            where = f"{redacted(broker.url)} ({broker.source})"
            console.print(f"broker {where}", style="dim", markup=False, highlight=False)
            console.print("starting mes, srm-api, then shop-api", style="dim")
            with console.status("waiting for the orders …") as status:

                def progress(fates: Mapping[str, Fate]) -> None:
                    done = sum(f.status == "completed" for f in fates.values())
                    lost = sum(f.status == "lost" for f in fates.values())
                    status.update(
                        f"orders: {done} completed, {lost} lost, "
                        f"{len(fates) - done - lost} in flight …"
                    )

                result = run_flow(
                    broker.url,
                    orders=args.orders,
                    consumer_context=args.consumer_context,
                    timeout=args.timeout,
                    on_progress=progress,
                )
    except BrokerUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    problems = render(result, console, broker=where)
    if args.show_logs or problems:
        for service, log in result.logs.items():
            if args.show_logs or result.exit_codes.get(service) != 0:
                console.rule(f"{service} log")
                console.print(log, markup=False, highlight=False)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
