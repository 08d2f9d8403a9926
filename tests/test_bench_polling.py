"""The load generator's long-polling transport: frame payloads it posts, and which members poll."""

from __future__ import annotations

import pytest

from bench.polling import frame_payloads
from bench.scenarios import by_name
from bench.wire import client_frame


@pytest.mark.parametrize("sizes", [[1], [125, 126, 127], [65535, 65536, 3], [0, 70000, 10]])
def test_frame_payloads_recovers_every_payload_of_concatenated_frames(sizes: list[int]) -> None:
    payloads = [bytes([48 + i % 10]) * n for i, n in enumerate(sizes)]
    assert frame_payloads(b"".join(client_frame(p) for p in payloads)) == payloads


def test_polling_share_spreads_over_members_and_spares_stalled_and_churners() -> None:
    quick = by_name("quick", duration=1, polling_share=0.2)
    assert len(quick.polling_members()) == 6  # 30 users x 0.2
    assert by_name("quick", duration=1).polling_members() == set()
    slow = by_name("slow-consumer", duration=1, polling_share=1.0)
    assert slow.polling_members() == set(range(slow.users)) - set(slow.stalled)
    mixed = by_name("mixed", duration=1, polling_share=1.0)
    assert not mixed.polling_members() & set(mixed.churn)
