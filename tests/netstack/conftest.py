"""Fixtures: a NetStack wired to the Linux kernel through a TUN device in a private namespace."""

from __future__ import annotations

import pytest

from kakuremichi.netstack.trio_stack import NetStack
from tests.netstack.tun import TunLink, tun_unavailable


@pytest.fixture
def tun():
    reason = tun_unavailable()
    if reason:
        pytest.skip(reason)
    with TunLink() as link:
        yield link


@pytest.fixture
async def kernel_stack(tun, nursery):
    """Our NetStack at `tun.our_address`, the kernel at `tun.kernel_address`."""
    stack = NetStack(tun, [tun.our_address])
    await nursery.start(tun.run, stack.receive_packets)
    await nursery.start(stack.run)
    return stack
