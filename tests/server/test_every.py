"""The shared periodic loop outlives a failing round, and waits when and as long
as its duty asks (the re-signer: first, and as long as its last pass chose)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from server.every import every


def test_a_failing_round_is_logged_and_the_next_one_still_runs() -> None:
    rounds: list[int] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def work() -> None:
            rounds.append(len(rounds))
            if len(rounds) == 1:
                raise OSError("database gone")
            stop.set()

        await every(0, stop, work, "duty_failed")

    with capture_logs() as logs:
        asyncio.run(main())
    assert rounds == [0, 1]
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        ("duty_failed", "error", "OSError: database gone")
    ]


def order(wait_first: bool) -> list[str]:
    """What the loop did, in order, over two rounds."""
    done: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()

        def pause() -> float:
            done.append("wait")
            return 0

        async def work() -> None:
            done.append("work")
            if done.count("work") == 2:
                stop.set()

        await every(pause, stop, work, "duty_failed", wait_first=wait_first)

    asyncio.run(main())
    return done


def test_the_wait_is_asked_for_before_each_wait_and_may_come_first() -> None:
    assert order(wait_first=False) == ["work", "wait", "work", "wait"]
    assert order(wait_first=True) == ["wait", "work", "wait", "work", "wait"]
