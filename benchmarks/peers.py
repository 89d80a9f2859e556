"""Bytes and fidelity at each server's default quality: imageserver, thumbor, imgproxy.

    python3 benchmarks/peers.py [--names w200,h300,w800] [--formats jpg,webp,avif,jxl]

Six photographs (as benchmarks/fidelity.py makes them: scikit-image's data
upscaled to 12 MP, JPEG q95) are resized by

  imageserver  its own pipeline (renderer.render), at each format's default
               quality and at a ladder of qualities (for the curve);
  thumbor      the real server from benchmarks/.thumbor-venv, as its docs
               deploy it (file loader, defaults: QUALITY 80, progressive JPEG,
               WEBP_QUALITY and AVIF_QUALITY unset, so 80);
  imgproxy     libvips (pyvips) configured as imgproxy's defaults configure
               it: shrink-on-load thumbnail with Lanczos3, then jpegsave Q80
               with optimised Huffman tables, webpsave Q79 effort 4, heifsave
               AV1 Q63 speed 8 (effort 1), and JPEG XL Q77 effort 4 (libjxl
               through Pillow, since this libvips has no jxlsave).

Every output is decoded and scored with SSIMULACRA2 against a full decode of
the same JPEG resized to the output's size with float LANCZOS. Prints, per
format and peer, the medians over photographs and sizes of the peer's bytes
and score, ours at our default, and our bytes at the peer's score
(interpolated on our ladder), each as a ratio to the peer's bytes; then the
lowest quality of our ladder that is at least as good as every peer. Needs
the ``bench`` extra; thumbor is installed on first use.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from benchmarks.common import Server, free_port
from benchmarks.encoders import bytes_at
from benchmarks.fidelity import score, sources
from benchmarks.versus_thumbor import thumbor_command
from imageserver.imaging import renderer
from imageserver.naming import VariantRules

LADDER = range(30, 97, 3)
RULES = VariantRules(frozenset({"jpg", "webp", "avif", "jxl", "png"}), 0, 4000)
LIMITS = renderer.Limits(100_000_000, 0, 4000)
#: imgproxy's default encoder settings (its config.go), as libvips options.
IMGPROXY = {
    "jpg": (".jpg", {"Q": 80, "optimize_coding": True, "strip": True}),
    "webp": (".webp", {"Q": 79, "effort": 4, "strip": True}),
    "avif": (".avif", {"Q": 63, "compression": "av1", "effort": 1, "strip": True}),
}
THUMBOR_FORMAT = {"jpg": "jpeg", "webp": "webp", "avif": "avif"}


def size_of(name: str) -> tuple[int, int]:
    """thumbor's and libvips' spelling of a w/h name: (width, height), 0 free."""
    return (int(name[1:]), 0) if name[0] == "w" else (0, int(name[1:]))


def ours(data: bytes, name: str, fmt: str, quality: int | None) -> bytes:
    q = "" if quality is None else f"-q{quality}"
    variant = RULES.parse(f"{name}{q}.{fmt}")
    assert variant is not None
    return renderer.render(data, variant, LIMITS)


def imgproxy(data: bytes, name: str, fmt: str) -> bytes:
    import pyvips

    width, height = size_of(name)
    thumb = pyvips.Image.thumbnail_buffer(
        data, width or 100_000, height=height or 100_000
    )
    if fmt == "jxl":  # libjxl at imgproxy's Q77, effort 4
        out = io.BytesIO()
        pixels = Image.open(io.BytesIO(thumb.write_to_buffer(".png")))
        pixels.save(out, "JXL", quality=77, effort=4)
        return out.getvalue()
    suffix, options = IMGPROXY[fmt]
    return bytes(thumb.write_to_buffer(suffix, **options))


Rows = dict[tuple[str, str, str], list[dict[str, Any]]]


class Rater:
    """Scores encoded outputs of one photograph against its exact resizes."""

    def __init__(self, data: bytes, folder: str) -> None:
        self.full = Image.open(io.BytesIO(data)).convert("RGB")
        self.folder = folder
        self.truth: dict[tuple[int, int], Image.Image] = {}

    def __call__(self, encoded: bytes) -> tuple[int, float]:
        """(bytes, SSIMULACRA2) of an encoded output."""
        decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
        if decoded.size not in self.truth:
            resized = self.full.resize(decoded.size, Image.Resampling.LANCZOS)
            self.truth[decoded.size] = resized
        return len(encoded), score(self.truth[decoded.size], decoded, self.folder)


def compare(
    rows: Rows, rate: Rater, data: bytes, name: str, fmt: str, thumbor: bytes | None
) -> None:
    """Add one photograph's figures for ``name`` in ``fmt`` to ``rows``."""
    ladders = {"imageserver": [rate(ours(data, name, fmt, q)) for q in LADDER]}
    mine = rate(ours(data, name, fmt, None))
    peers = {"imgproxy": rate(imgproxy(data, name, fmt))}
    if thumbor is not None:
        peers["thumbor"] = rate(thumbor)
    for peer, (size, fidelity) in peers.items():
        for encoder, ladder in ladders.items():
            equal = bytes_at([(s, b) for b, s in ladder], fidelity)
            rows.setdefault((fmt, peer, encoder), []).append(
                {
                    "bytes": size,
                    "score": fidelity,
                    "ours_ratio": mine[0] / size,
                    "ours_delta": mine[1] - fidelity,
                    "equal": None if equal is None else equal / size,
                    "ladder": [(b / size, s - fidelity) for b, s in ladder],
                }
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default="w200,h300,w800")
    parser.add_argument("--formats", default="jpg,webp,avif,jxl")
    parser.add_argument("--ladder", action="store_true", help="print every step")
    args = parser.parse_args()
    names, fmts = args.names.split(","), args.formats.split(",")
    photos = list(sources().values())
    rows: Rows = {}
    with tempfile.TemporaryDirectory() as root:
        for index, data in enumerate(photos):
            with open(os.path.join(root, f"{index}.jpg"), "wb") as f:
                f.write(data)
        with open(os.path.join(root, "thumbor.conf"), "w") as f:
            f.write(
                "LOADER = 'thumbor.loaders.file_loader'\n"
                f"FILE_LOADER_ROOT_PATH = {root!r}\n"
                "ALLOW_UNSAFE_URL = True\nMAX_WIDTH = 0\nMAX_HEIGHT = 0\n"
            )
        port = free_port()
        command = [thumbor_command(), "-i", "127.0.0.1", "-p", str(port),
                   "-c", os.path.join(root, "thumbor.conf"), "-l", "error"]  # fmt: skip
        with Server(command, port, root) as thumbor:
            thumbor.wait("/healthcheck")
            for index, data in enumerate(photos):
                rate = Rater(data, root)
                for name in names:
                    width, height = size_of(name)
                    for fmt in fmts:
                        theirs = None
                        if fmt in THUMBOR_FORMAT:
                            path = (f"/unsafe/{width}x{height}/filters:format("
                                    f"{THUMBOR_FORMAT[fmt]})/{index}.jpg")  # fmt: skip
                            with urllib.request.urlopen(thumbor.url(path)) as r:
                                theirs = bytes(r.read())
                        compare(rows, rate, data, name, fmt, theirs)
    report(rows, f"{len(photos)} photographs, names {args.names}", args.ladder)


def report(rows: Rows, what: str, ladder: bool) -> None:
    """Medians over photographs and names; ratios are ours / the peer's bytes,
    deltas are ours - theirs in SSIMULACRA2."""
    median = statistics.median
    print(f"{what}; medians; bytes as ours / theirs; scores as ours - theirs")
    print(f"{'format':6} {'peer':9} {'encoder':11} {'their B':>8} {'score':>6}"
          f" {'ours@default':>14} {'ours@their score':>17}")  # fmt: skip
    for (fmt, peer, encoder), found in rows.items():
        equal = [r["equal"] for r in found if r["equal"] is not None]
        at_default = (f"x{median(r['ours_ratio'] for r in found):.3f} "
                      f"{median(r['ours_delta'] for r in found):+.1f}")  # fmt: skip
        print(f"{fmt:6} {peer:9} {encoder:11} {median(r['bytes'] for r in found):8.0f}"
              f" {median(r['score'] for r in found):6.1f} {at_default:>14}"
              f" {f'x{median(equal):.3f}' if equal else '-':>10}"
              f" ({len(equal)}/{len(found)})")  # fmt: skip
        if ladder:
            for step, quality in enumerate(LADDER):
                ratio = median(r["ladder"][step][0] for r in found)
                delta = median(r["ladder"][step][1] for r in found)
                print(f"{'':28} q{quality}: x{ratio:.3f} {delta:+.1f}")
    print("\nthe lowest quality at least as good as every peer (median score):")
    for fmt, encoder in dict.fromkeys((f, e) for f, _, e in rows):
        peers = [(p, v) for (f, p, e), v in rows.items() if (f, e) == (fmt, encoder)]
        for step, quality in enumerate(LADDER):
            deltas = [median(r["ladder"][step][1] for r in found) for _, found in peers]
            if min(deltas) >= 0:
                print(f"  {fmt} ({encoder}): q{quality}: " + ", ".join(
                    f"{p} x{median(r['ladder'][step][0] for r in found):.3f} {d:+.1f}"
                    for (p, found), d in zip(peers, deltas, strict=True)))  # fmt: skip
                break


if __name__ == "__main__":
    main()
