"""What happens to an image, told to whoever listens (webhooks, other instances).

The use cases call a `Lifecycle` after each change is stored; a listener must
return at once and never fail the request that caused the change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from imageserver.naming import ImageId


class Lifecycle(Protocol):
    def stored(self, image: ImageId, keys: Sequence[str]) -> None:
        """A new original was stored, with its info.json and first outputs."""

    def generated(self, image: ImageId, keys: Sequence[str]) -> None:
        """Variants were generated and stored for the first time."""

    def deleted(self, image: ImageId, keys: Sequence[str]) -> None:
        """One variant or file was deleted."""

    def purged(self, image: ImageId, keys: Sequence[str]) -> None:
        """The image was removed with everything in its folder."""


class NoLifecycle:
    """Nobody listens; a listener that cares for some events only overrides
    those."""

    def stored(self, image: ImageId, keys: Sequence[str]) -> None:
        pass

    def generated(self, image: ImageId, keys: Sequence[str]) -> None:
        pass

    def deleted(self, image: ImageId, keys: Sequence[str]) -> None:
        pass

    def purged(self, image: ImageId, keys: Sequence[str]) -> None:
        pass


class Listeners:
    """Several listeners as one, told in order."""

    def __init__(self, listeners: Sequence[Lifecycle]) -> None:
        self._listeners = tuple(listeners)

    def stored(self, image: ImageId, keys: Sequence[str]) -> None:
        for listener in self._listeners:
            listener.stored(image, keys)

    def generated(self, image: ImageId, keys: Sequence[str]) -> None:
        for listener in self._listeners:
            listener.generated(image, keys)

    def deleted(self, image: ImageId, keys: Sequence[str]) -> None:
        for listener in self._listeners:
            listener.deleted(image, keys)

    def purged(self, image: ImageId, keys: Sequence[str]) -> None:
        for listener in self._listeners:
            listener.purged(image, keys)
