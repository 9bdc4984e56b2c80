"""Tests of llm_es.service.user_locks: one lock per user, kept only while someone needs it."""

from __future__ import annotations

import asyncio

import pytest

from llm_es.service.user_locks import UserLocks


async def test_locks_do_not_accumulate_after_many_users() -> None:
    """Every user's lock is dropped once its holder leaves: 20,000 users leave nothing."""
    locks = UserLocks()
    for n in range(20_000):
        async with locks.hold(f"user-{n}"):
            assert len(locks) == 1
    assert len(locks) == 0


async def test_holders_of_one_user_take_turns() -> None:
    """Concurrent holders of one user's lock never overlap; other users are not held up."""
    locks = UserLocks()
    inside = 0
    most_inside = 0
    order: list[int] = []

    async def hold(n: int) -> None:
        nonlocal inside, most_inside
        async with locks.hold("alice"):
            inside += 1
            most_inside = max(most_inside, inside)
            order.append(n)
            await asyncio.sleep(0)  # give every other task the chance to barge in
            inside -= 1

    async with locks.hold("alice"):
        tasks = [asyncio.create_task(hold(n)) for n in range(50)]
        await asyncio.sleep(0)
        assert locks.waiting("alice") == 51
        async with asyncio.timeout(1):
            async with locks.hold("bob"):  # another user's lock is free meanwhile
                assert len(locks) == 2
    await asyncio.gather(*tasks)
    assert most_inside == 1
    assert order == list(range(50))  # asyncio.Lock is fair: first come, first served
    assert len(locks) == 0


async def test_no_lock_is_dropped_while_someone_waits_for_it() -> None:
    """When a holder leaves with others waiting, the lock stays and serializes them all.

    The old registry could drop a lock with waiters on it; a newcomer then made a
    second lock for the same user and ran beside a waiter of the first.
    """
    locks = UserLocks()
    released = asyncio.Event()
    inside: list[str] = []
    overlaps = 0

    async def hold(name: str, wait: asyncio.Event | None = None) -> None:
        nonlocal overlaps
        async with locks.hold("alice"):
            overlaps += bool(inside)
            inside.append(name)
            if wait is not None:
                await wait.wait()
            await asyncio.sleep(0)
            inside.remove(name)

    first = asyncio.create_task(hold("first", released))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(hold(f"waiter-{n}")) for n in range(3)]
    await asyncio.sleep(0)
    assert locks.waiting("alice") == 4
    released.set()
    await first
    assert locks.waiting("alice") == 3  # the first left; the lock stays for its waiters
    late = asyncio.create_task(hold("late"))
    await asyncio.gather(*waiters, late)
    assert overlaps == 0
    assert len(locks) == 0


async def test_a_waiter_that_gives_up_leaves_the_lock_to_the_others() -> None:
    """A cancelled waiter is no longer counted; the lock goes when the rest are done."""
    locks = UserLocks()
    release = asyncio.Event()

    async def hold_until_released() -> None:
        async with locks.hold("alice"):
            await release.wait()

    holder = asyncio.create_task(hold_until_released())
    await asyncio.sleep(0)
    impatient = asyncio.create_task(hold_until_released())
    patient = asyncio.create_task(hold_until_released())
    await asyncio.sleep(0)
    assert locks.waiting("alice") == 3
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert locks.waiting("alice") == 2
    release.set()
    await asyncio.gather(holder, patient)
    assert len(locks) == 0
