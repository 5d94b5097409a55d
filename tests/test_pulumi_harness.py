"""The mock harness itself: a failed build leaves nothing behind for the next one."""

from __future__ import annotations

import asyncio

import pulumi
import pulumi_harness as harness  # noqa: I001  (sets the mocks before any component module is imported)
import pytest


async def _late(value: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return value


async def _broken() -> str:
    raise ValueError("this input never resolves")


def _a_build_that_fails_while_another_registration_waits() -> None:
    pulumi.CustomResource("test:index:Thing", "late", {"value": pulumi.Output.from_input(_late("x", 0.1))})
    pulumi.CustomResource("test:index:Thing", "broken", {"value": pulumi.Output.from_input(_broken())})


def test_registrations_left_by_a_failed_build_never_land_in_the_next_builds_record() -> None:
    with pytest.raises(Exception, match="never resolves"):
        harness.build(_a_build_that_fails_while_another_registration_waits)
    # The next build runs the loop for longer than the left-over registration needs to finish.
    _, rec = harness.build(lambda: {"v": pulumi.Output.from_input(_late("y", 0.3))})
    assert [r.name for r in rec.resources] == []
    assert harness.MOCKS.resources == []
