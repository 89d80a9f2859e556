"""The similar index: every search against a brute force over what was
recorded, across instances sharing a store, through compactions."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from imageserver.imaging import likeness
from imageserver.storage import similar
from imageserver.storage.local import LocalStorage
from imageserver.storage.similar import SimilarIndex
from tests.support import synchronous


def digest(n: int) -> str:
    return hashlib.md5(str(n).encode()).hexdigest()


class SimilarIndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.storage = LocalStorage(self.mktemp(), synchronous)
        self.clock = Clock()

    def index(self) -> SimilarIndex:
        return SimilarIndex(self.storage, self.clock)

    def near(
        self, index: SimilarIndex, phash: int, distance: int, most: int = 1000
    ) -> list[tuple[str, int]]:
        return self.successResultOf(index.near("p", phash, distance, most))

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["add", "remove", "search", "later"]),
                st.integers(0, 40),
                st.integers(0, 2**64 - 1),
                st.integers(0, 20),
            ),
            max_size=60,
        ),
        st.integers(0, 3),
    )
    def test_every_search_is_the_brute_force_answer(
        self, steps: list[tuple[str, int, int, int]], compact_after: int
    ) -> None:
        # Two instances over one store: one writes, both search; compaction
        # as often as every few segments.
        self.patch(similar, "COMPACT_AFTER", compact_after + 1)
        storage = LocalStorage(self.mktemp(), synchronous)
        writer = SimilarIndex(storage, self.clock)
        reader = SimilarIndex(storage, self.clock)
        truth: dict[str, int] = {}
        for op, image, phash, distance in steps:
            # Instances' segments sort by time: on one host's clock, what one
            # writes after another is later (the same nanosecond in two
            # processes, or hosts' clocks apart, are what the store's check
            # of every answer is for).
            self.clock.advance(1e-6)
            if op == "add":
                self.successResultOf(writer.add("p", digest(image), phash))
                truth[digest(image)] = phash
            elif op == "remove":
                self.successResultOf(writer.remove("p", digest(image)))
                truth.pop(digest(image), None)
            elif op == "later":
                self.clock.advance(similar.REFRESH)
            else:
                expected = sorted(
                    (likeness.distance(h, phash), d)
                    for d, h in truth.items()
                    if likeness.distance(h, phash) <= distance
                )
                for index in (writer, reader):
                    self.clock.advance(similar.REFRESH)
                    found = self.successResultOf(index.near("p", phash, distance, 100))
                    self.assertEqual(sorted((b, d) for d, b in found), expected)
                    bits = [b for _, b in found]
                    self.assertEqual(bits, sorted(bits))

    def test_the_nearest_first_and_at_most_asked(self) -> None:
        index = self.index()
        for n in range(10):
            self.successResultOf(index.add("p", digest(n), (1 << n) - 1))
        found = self.successResultOf(index.near("p", 0, 64, 3))
        self.assertEqual(found, [(digest(0), 0), (digest(1), 1), (digest(2), 2)])

    def test_an_md5_ending_in_zero_bytes_comes_back_whole(self) -> None:
        index = self.index()
        odd = "0123456789abcdef0123456789ab0000"
        self.successResultOf(index.add("p", odd, 7))
        self.assertEqual(self.successResultOf(index.near("p", 7, 0, 5)), [(odd, 0)])
        self.clock.advance(similar.REFRESH)
        other = self.index()
        self.assertEqual(self.successResultOf(other.near("p", 7, 0, 5)), [(odd, 0)])

    def test_another_instance_sees_a_change_within_the_refresh(self) -> None:
        first, second = self.index(), self.index()
        self.assertEqual(self.successResultOf(second.near("p", 5, 0, 5)), [])
        self.successResultOf(first.add("p", digest(1), 5))
        self.assertEqual(self.successResultOf(second.near("p", 5, 0, 5)), [])
        self.clock.advance(similar.REFRESH)
        self.assertEqual(
            self.successResultOf(second.near("p", 5, 0, 5)), [(digest(1), 0)]
        )

    def test_namespaces_are_apart(self) -> None:
        index = self.index()
        self.successResultOf(index.add("p", digest(1), 5))
        self.assertEqual(self.successResultOf(index.near("q", 5, 64, 5)), [])

    def test_uploads_are_compacted_and_nothing_is_lost(self) -> None:
        writer = self.index()
        rng = random.Random(1)
        truth = {digest(n): rng.getrandbits(64) for n in range(1000)}
        for d, h in truth.items():
            self.successResultOf(writer.add("p", d, h))
        # One segment an upload, compacted as they are written: never many
        # more than COMPACT_AFTER; a fresh instance reads them all.
        names = self.successResultOf(self.storage.list(f"{similar.FOLDER}/p"))
        self.assertLessEqual(len(names), similar.COMPACT_AFTER + 1)
        fresh = self.index()
        found = self.successResultOf(fresh.near("p", 0, 64, 2000))
        self.assertEqual(dict(found).keys(), truth.keys())

    def test_a_purge_leaves_nothing_of_the_image_in_the_store(self) -> None:
        index, other = self.index(), self.index()
        self.successResultOf(index.add("p", digest(1), 5))
        self.successResultOf(index.add("p", digest(2), 6))
        self.assertEqual(len(self.successResultOf(other.near("p", 5, 2, 5))), 2)
        self.successResultOf(index.remove("p", digest(1)))
        stored = b"".join(
            self.successResultOf(self.storage.get(f"{similar.FOLDER}/p/{n}")).data
            for n in self.successResultOf(self.storage.list(f"{similar.FOLDER}/p"))
        )
        self.assertNotIn(bytes.fromhex(digest(1)), stored)
        # Another instance that had read it forgets it at its next look.
        self.clock.advance(similar.REFRESH)
        self.assertEqual(
            self.successResultOf(other.near("p", 5, 2, 5)), [(digest(2), 2)]
        )
        self.successResultOf(index.remove("p", digest(2)))
        self.assertEqual(
            self.successResultOf(self.storage.list(f"{similar.FOLDER}/p")), []
        )


class _SlowStorage:
    """A store whose writes land a moment later (a bucket's): what lets
    work interleave while a segment is on its way."""

    def __init__(self, backend: LocalStorage, clock: Clock) -> None:
        self.backend = backend
        self.clock = clock

    async def put(
        self, key: str, data: bytes, content_type: str, **kw: object
    ) -> object:
        await deferLater(self.clock, 0.01, lambda: None)
        return await self.backend.put(key, data, content_type)

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)


class OverlappingPurgesTests(SynchronousTestCase):
    def test_purges_at_once_in_a_process_leave_nothing_of_the_purged(self) -> None:
        clock = Clock()
        backend = LocalStorage(self.mktemp(), synchronous)
        store = _SlowStorage(backend, clock)
        # One process's purges, at once, over a store whose writes take time.
        first = SimilarIndex(store, clock)  # type: ignore[arg-type]
        rng = random.Random(2)
        truth = {digest(n): rng.getrandbits(64) for n in range(20)}
        for d, h in truth.items():
            done = Deferred.fromCoroutine(first.add("p", d, h))
            while not done.called:
                clock.advance(0.01)
        purged = list(truth)[:10]
        running = [
            Deferred.fromCoroutine(first.remove("p", d)) for n, d in enumerate(purged)
        ]
        for _ in range(10_000):
            if all(d.called for d in running):
                break
            clock.advance(0.005)
        for d in running:
            self.successResultOf(d)
        names = self.successResultOf(backend.list(f"{similar.FOLDER}/p"))
        stored = b"".join(
            self.successResultOf(backend.get(f"{similar.FOLDER}/p/{n}")).data
            for n in names
        )
        left = [d for d in purged if bytes.fromhex(d) in stored]
        self.assertEqual(left, [])
        fresh = SimilarIndex(backend, clock)
        found = self.successResultOf(fresh.near("p", 0, 64, 100))
        self.assertEqual(sorted(d for d, _ in found), sorted(list(truth)[10:]))


class OtherProcessesPurgesTests(SynchronousTestCase):
    def test_a_record_another_process_brought_back_goes_at_the_next_compaction(
        self,
    ) -> None:
        # Process A compacts while B purges: A's segment, written from what
        # it read before B's purge, holds the purged image again. B's next
        # compaction drops it (the image's info.json is gone).
        clock = Clock()
        store = LocalStorage(self.mktemp(), synchronous)
        a, b = SimilarIndex(store, clock), SimilarIndex(store, clock)
        for n in range(3):
            self.successResultOf(a.add("p", digest(n), n))
        self.successResultOf(a.near("p", 0, 64, 10))  # A has read them
        self.successResultOf(b.remove("p", digest(0)))
        # A's stale state written as a segment after B's purge.
        self.successResultOf(a._compact("p", a._namespaces["p"], []))
        found = self.successResultOf(SimilarIndex(store, clock).near("p", 0, 64, 10))
        self.assertIn(digest(0), dict(found))  # brought back
        self.successResultOf(b.remove("p", digest(1)))  # B compacts again
        found = self.successResultOf(SimilarIndex(store, clock).near("p", 0, 64, 10))
        self.assertEqual(list(dict(found)), [digest(2)])
