"""SSIMULACRA2 against the ``ssimulacra2`` package, the quality search
against a brute force, and the sample a large output is judged on."""

from __future__ import annotations

import io
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import replace

import numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from ssimulacra2 import ssimulacra2 as port
from twisted.trial.unittest import SynchronousTestCase

from benchmarks import corpus
from imageserver import formats
from imageserver.imaging import perception, renderer
from imageserver.naming import QUALITY_LEVELS, VariantRules
from tests.support import encode

#: How far from the package a score may be: float32 against float64 (0.03
#: at most on 400 random crops; hypothesis found 0.064 on a thin one).
CLOSE = 0.15
#: How far the score of a whole large output may be from its sample's, for
#: the JPEG this test makes (docs/performance.md: 1 to 9 points on the
#: benchmark's photographs, 4.4 at most for JPEG at qgood).
SAMPLE_ERROR = 4.5


def reference_score(original: Picture, distorted: Picture) -> float:
    """The package's own steps (float64, SciPy) in the order of libjxl's
    reference: a scale is computed while the one before is at least 8
    pixels a side. The package's `compute_ssimulacra2` checks the halved
    one instead, and so differs from the reference on pictures under 256
    pixels a side; at and above, the two agree (`test_the_package_itself`)."""
    linear1 = port.srgb_to_linear(_values(original))
    linear2 = port.srgb_to_linear(_values(distorted))
    found = port.Msssim()
    one = two = None
    for scale in range(perception.SCALES):
        if one is not None and (one.shape[0] < 8 or one.shape[1] < 8):
            break
        if scale:
            linear1 = port.downsample(linear1, 2, 2)
            linear2 = port.downsample(linear2, 2, 2)
        one = port.make_positive_xyb(port.linear_rgb_to_xyb(linear1))
        two = port.make_positive_xyb(port.linear_rgb_to_xyb(linear2))
        mu1, mu2 = port.blur_image(one), port.blur_image(two)
        averages = port.MsssimScale()
        averages.avg_ssim = port.ssim_map(
            mu1,
            mu2,
            port.blur_image(one * one),
            port.blur_image(two * two),
            port.blur_image(one * two),
        )
        averages.avg_edgediff = port.edge_diff_map(one, mu1, two, mu2)
        found.scales.append(averages)
    return float(found.score())


Picture = Image.Image | numpy.ndarray


def _values(picture: Picture) -> numpy.ndarray:
    """sRGB values, 0-255 (an array is taken as it is: not rounded)."""
    if isinstance(picture, Image.Image):
        return numpy.asarray(picture.convert("RGB"), float)
    return picture


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert(image.mode)


def blended(image: Image.Image, grey: float) -> numpy.ndarray:
    """An RGBA picture laid on a grey, in sRGB values, as libjxl does."""
    rgba = numpy.asarray(image, float) / 255
    alpha = rgba[..., 3:]
    return (rgba[..., :3] * alpha + (1 - alpha) * grey) * 255


class ScoreTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(
        st.sampled_from(corpus.PHOTOS),
        st.integers(8, 300),
        st.integers(8, 300),
        st.integers(0, 200),
        st.integers(5, 95),
    )
    def test_agrees_with_the_package_at_every_size(
        self, name: str, width: int, height: int, offset: int, quality: int
    ) -> None:
        """Any crop of a photograph, 8 to 300 pixels a side (odd sides
        halve into part blocks; under 16, fewer scales), at any JPEG
        quality."""
        photo = corpus.photo(name)  # each at least 300 pixels a side
        left = offset % (photo.width - width + 1)
        top = offset % (photo.height - height + 1)
        original = photo.crop((left, top, left + width, top + height))
        distorted = jpeg(original, quality)
        ours = perception.score(original, distorted)
        self.assertLessEqual(abs(ours - reference_score(original, distorted)), CLOSE)

    def test_the_package_itself(self) -> None:
        """Where the package follows the reference (256 pixels a side and
        more), its own entry point, from files, gives the same scores."""
        folder = tempfile.mkdtemp()
        for name in ("astronaut", "rocket", "hubble_deep_field"):
            original = corpus.photo(name)
            for quality in (20, 90):
                distorted = jpeg(original, quality)
                paths = [os.path.join(folder, f"{n}.png") for n in "ab"]
                original.save(paths[0])
                distorted.save(paths[1])
                ours = perception.score(original, distorted)
                theirs = port.compute_ssimulacra2(*paths)
                self.assertLessEqual(abs(ours - theirs), CLOSE, (name, quality))

    def test_the_same_picture_scores_100(self) -> None:
        photo = corpus.photo("coffee")
        self.assertEqual(perception.score(photo, photo.copy()), 100.0)

    def test_worse_encodings_score_lower(self) -> None:
        photo = corpus.photo("astronaut")
        scores = [perception.score(photo, jpeg(photo, q)) for q in (10, 40, 70, 95)]
        self.assertEqual(scores, sorted(scores), scores)
        self.assertGreater(scores[-1], 85)
        self.assertLess(scores[0], 40)

    def test_transparency_is_judged_on_dark_and_light_grey(self) -> None:
        """The worse of the two backgrounds counts: a change under a
        half-transparent area shows on one of them."""
        photo = corpus.photo("chelsea").resize((160, 120))
        alpha = Image.linear_gradient("L").resize(photo.size)
        original = photo.copy()
        original.putalpha(alpha)
        changed = jpeg(photo, 30)
        changed.putalpha(alpha)
        expected = min(
            reference_score(blended(original, g), blended(changed, g))
            for g in (0.1, 0.9)
        )
        self.assertLessEqual(abs(perception.score(original, changed) - expected), CLOSE)

    def test_a_reference_scores_many(self) -> None:
        photo = corpus.photo("rocket").resize((200, 133))
        reference = perception.Reference(photo)
        for quality in (30, 80):
            distorted = jpeg(photo, quality)
            self.assertEqual(
                reference.score(distorted), perception.score(photo, distorted)
            )

    def test_sizes_must_agree(self) -> None:
        photo = corpus.photo("coffee")
        with self.assertRaises(ValueError):
            perception.score(photo, photo.resize((10, 10)))

    def test_under_8_pixels_a_side_is_not_judged(self) -> None:
        """As libjxl's reference: nothing is compared there (it would score
        100 whatever the encoding)."""
        for size in ((7, 100), (100, 7), (1, 1)):
            picture = Image.new("RGB", size)
            with self.assertRaises(ValueError):
                perception.score(picture, picture)
        perception.score(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)))


def curve(
    draw: Callable[[float, float], float], choose: Callable[[int, int], int]
) -> dict[int, float]:
    """A score for every quality as encoders give them: rising by 0.2 to
    1.2 points a quality, the rate changing every 15 to 40 qualities, with
    a wobble of up to 0.3 either way (scores are not strictly monotone)."""
    score = draw(0, 50)
    found: dict[int, float] = {}
    quality = 1
    while quality <= 100:
        slope = draw(0.2, 1.2)
        for _ in range(choose(15, 40)):
            score += slope
            found[quality] = score + draw(-0.3, 0.3)
            quality += 1
    return {q: found[q] for q in range(1, 101)}


def steady(curve: dict[int, float], target: float) -> int | None:
    """The lowest allowed quality from which every higher one keeps
    ``target``: the answer a search looks for."""
    allowed = range(perception.LOWEST, perception.HIGHEST + 1)
    for q in allowed:
        if all(curve[r] >= target for r in allowed if r >= q):
            return q
    return None


#: How far from the answer a search may start and still find it.
NEAR = 30


class SearchTests(SynchronousTestCase):
    def test_the_lowest_quality_that_keeps_the_target(self) -> None:
        """On 5,000 curves (seeded), from a start within `NEAR` qualities
        of the answer (the format's default, on pictures and levels as they
        come: benchmarks/quality.py), against the answer by brute force:
        99 % of choices are within `PRECISION` of it (the rest higher: the
        last try, where none has kept the target yet, takes twice the step
        planned), every one keeps the target, and a search takes 4.1 trials
        on average, `MOST_ENCODES` at most."""
        generator = random.Random(29)
        near = trials = searches = 0
        while searches < 5000:
            scores = curve(generator.uniform, generator.randint)
            target = generator.uniform(50, 95)
            answer = steady(scores, target)
            if answer is None:
                continue
            tried: list[int] = []

            def trial(
                quality: int,
                scores: dict[int, float] = scores,
                tried: list[int] = tried,
            ) -> float:
                tried.append(quality)
                return scores[quality]

            start = answer + generator.randint(-NEAR, NEAR)
            chosen = perception.search(trial, target, start, perception.MOST_ENCODES)
            self.assertLessEqual(len(tried), perception.MOST_ENCODES)
            self.assertGreaterEqual(scores[chosen], target)
            self.assertGreaterEqual(chosen, answer - perception.PRECISION - 2)
            near += chosen - answer <= perception.PRECISION
            trials += len(tried)
            searches += 1
        self.assertGreaterEqual(near / searches, 0.99)
        self.assertLessEqual(trials / searches, 4.3)

    @settings(max_examples=300, deadline=None)
    @given(st.randoms(use_true_random=False), st.floats(0.01, 30), st.integers(1, 100))
    def test_out_of_reach_is_the_best_tried(
        self, generator: random.Random, beyond: float, start: int
    ) -> None:
        """Where no quality keeps the target (thumbnails in lossy WebP's
        halved colour, stars on black), the highest tried: the best score
        found, its score below the target."""
        scores = curve(generator.uniform, generator.randint)
        target = max(scores.values()) + beyond
        tried: list[int] = []

        def trial(quality: int) -> float:
            tried.append(quality)
            return scores[quality]

        chosen = perception.search(trial, target, start, perception.MOST_ENCODES)
        self.assertEqual(chosen, max(tried))
        self.assertLessEqual(len(tried), perception.MOST_ENCODES)

    @given(st.dictionaries(st.integers(1, 100), st.floats(0, 100)), st.floats(0, 100))
    def test_any_scores_end_within_the_encodes(
        self, noise: dict[int, float], target: float
    ) -> None:
        """Scores that do not rise with quality (no encoder's, but a search
        must end): at most the trials allowed, and a quality tried."""
        tried: list[int] = []

        def trial(quality: int) -> float:
            tried.append(quality)
            return noise.get(quality, 50.0)

        for encodes in (1, 2, 5):
            tried.clear()
            chosen = perception.search(trial, target, 84, encodes)
            self.assertLessEqual(len(tried), encodes)
            self.assertIn(chosen, tried)

    def test_jpeg_of_photographs_against_every_quality(self) -> None:
        """The real thing, small: every quality of JPEG scored, and the
        search's choice within `PRECISION` of the lowest that keeps each
        level's target (scores rise with JPEG quality but not strictly:
        the lowest is the lowest from which every higher one keeps it)."""
        for name in corpus.PHOTOS:
            photo = corpus.photo(name).resize((160, 120))
            scores = {
                q: perception.score(photo, jpeg(photo, q))
                for q in range(perception.LOWEST, perception.HIGHEST + 1)
            }
            for target in (70.0, 78.0, 85.0):

                def encode(quality: int, photo: Image.Image = photo) -> bytes:
                    out = io.BytesIO()
                    photo.save(out, "JPEG", quality=quality)
                    return out.getvalue()

                choice = perception.choose(photo, encode, _decoded, target, 84)
                self.assertAlmostEqual(choice.score, scores[choice.quality], 6)
                if max(scores.values()) < target:  # out of reach: the most
                    self.assertEqual(choice.quality, perception.HIGHEST)
                    continue
                self.assertGreaterEqual(choice.score, target, (name, target))
                steady = [
                    q
                    for q in scores
                    if all(scores[r] >= target for r in scores if r >= q)
                ]
                if steady:
                    self.assertLessEqual(
                        choice.quality, steady[0] + perception.PRECISION, (name, target)
                    )


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class ProbeTests(SynchronousTestCase):
    def test_a_small_picture_is_its_own_sample(self) -> None:
        image = Image.new("RGB", (384, 384))
        self.assertIs(perception.probe(image), image)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 5000), st.integers(1, 5000))
    def test_tiles_spread_over_the_picture(self, width: int, height: int) -> None:
        """And a sample costs an encoder at most `PROBE_PIXELS` in blocks
        of 64, whatever the picture's shape (a thin strip costs AVIF four
        times its pixels, and is sampled)."""
        picture = Image.new("L", (width, height))
        sample = perception.probe(picture)
        blocks = perception._blocks(sample.width) * perception._blocks(sample.height)
        self.assertLessEqual(blocks, perception.PROBE_PIXELS)
        if sample is picture:
            return
        for length in (width, height):
            starts = perception._starts(length)
            self.assertEqual(starts, sorted(set(starts)))
            self.assertLessEqual(len(starts), perception.TILES)
            for start in starts:
                self.assertGreaterEqual(start, 0)
                self.assertLessEqual(start + min(perception.TILE, length), length)
                if start != length - perception.TILE:
                    self.assertEqual(start % 64, 0)
            if length >= perception.TILE * perception.TILES:
                self.assertEqual(len(starts), perception.TILES)

    def test_the_sample_is_the_pictures_tiles(self) -> None:
        image = Image.effect_noise((1000, 700), 60).convert("RGB")
        sample = perception.probe(image)
        tile = perception.TILE
        across, down = perception._starts(1000), perception._starts(700)
        self.assertEqual(sample.size, (tile * len(across), tile * len(down)))
        for row, top in enumerate(down):
            for column, left in enumerate(across):
                self.assertEqual(
                    sample.crop(
                        (
                            column * tile,
                            row * tile,
                            (column + 1) * tile,
                            (row + 1) * tile,
                        )
                    ).tobytes(),
                    image.crop((left, top, left + tile, top + tile)).tobytes(),
                )


RULES = VariantRules(frozenset({"jpg", "png", "webp", "avif", "jxl", "gif"}), 0, 4000)
LIMITS = renderer.Limits(50_000_000, 1000, 4000)


def rendered(data: bytes, name: str) -> tuple[bytes, tuple[int, float | None] | None]:
    variant = RULES.canonical(name)
    assert variant is not None
    info, [output] = renderer.render_many(data, [variant], LIMITS)
    return output, (info.chosen_qualities or {}).get(variant.name)


def at_quality(data: bytes, name: str, quality: int) -> bytes:
    """The level's variant ``name`` encoded at ``quality``, as the renderer
    encodes it (its pixels from the lossless render of the same name)."""
    variant = RULES.canonical(name)
    assert variant is not None
    lossless = RULES.canonical(name.rsplit("-q", 1)[0] + ".png")
    assert lossless is not None
    _, [png] = renderer.render_many(data, [lossless], LIMITS)
    pixels = Image.open(io.BytesIO(png))
    pixels.load()
    small = renderer._small_level(variant, pixels.size)
    return renderer._encode(pixels, replace(variant, quality=quality), small)


def photo_png(name: str, size: tuple[int, int] | None = None) -> bytes:
    image = corpus.photo(name)
    if size is not None:
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class LevelRenderTests(SynchronousTestCase):
    """Levels through the renderer: the quality chosen per output, the
    score it keeps, the bytes a fixed quality would give."""

    def test_every_lossy_format_keeps_each_level(self) -> None:
        """The score recorded is the output's own (the whole output is
        judged at this size), at least the level's; the bytes are the
        format's at the quality recorded; a higher level, a higher quality."""
        data = photo_png("chelsea")
        for fmt in ("jpg", "webp", "avif", "jxl"):
            reference = _decoded(rendered(data, "w200.png")[0])
            qualities = []
            for level, target in QUALITY_LEVELS.items():
                output, chosen = rendered(data, f"w200-q{level}.{fmt}")
                assert chosen is not None
                quality, score = chosen
                assert score is not None
                self.assertGreaterEqual(score, target, (fmt, level))
                self.assertAlmostEqual(
                    perception.score(reference, _decoded(output)), score, 6
                )
                self.assertEqual(
                    at_quality(data, f"w200-q{level}.{fmt}", quality), output
                )
                qualities.append(quality)
            self.assertEqual(qualities, sorted(qualities, reverse=True), fmt)

    def test_a_large_output_is_judged_on_a_sample(self) -> None:
        """Over `PROBE_PIXELS`, the tiles keep the level; the whole output
        scores within `SAMPLE_ERROR` of it (benchmarks/quality.py)."""
        data = photo_png("retina")  # 1411x1411
        output, chosen = rendered(data, "w1000-qgood.jpg")
        assert chosen is not None
        quality, score = chosen
        assert score is not None
        self.assertGreaterEqual(score, QUALITY_LEVELS["good"])
        reference = _decoded(rendered(data, "w1000.png")[0])
        whole = perception.score(reference, _decoded(output))
        self.assertLessEqual(abs(whole - score), SAMPLE_ERROR)
        self.assertEqual(rendered(data, f"w1000-q{quality}.jpg")[0], output)

    def test_small_jpeg_levels_keep_full_colour_resolution(self) -> None:
        """Up to `SMALL_LEVEL_PIXELS`, a level's JPEG is 4:4:4: at 100
        pixels wide the astronaut keeps qgood, which 4:2:0 misses at any
        quality (60 at q95); larger outputs are jpegli's 4:2:0."""
        from PIL import JpegImagePlugin

        data = photo_png("astronaut")
        small, chosen = rendered(data, "w100-qgood.jpg")
        assert chosen is not None and chosen[1] is not None
        self.assertGreaterEqual(chosen[1], QUALITY_LEVELS["good"])
        self.assertLess(chosen[0], perception.HIGHEST)
        image = Image.open(io.BytesIO(small))
        self.assertEqual(JpegImagePlugin.get_sampling(image), 0)
        fixed = Image.open(io.BytesIO(rendered(data, "w100-q95.jpg")[0]))
        self.assertEqual(JpegImagePlugin.get_sampling(fixed), 2)
        large, chosen = rendered(photo_png("retina"), "w1000-qgood.jpg")
        assert chosen is not None
        image = Image.open(io.BytesIO(large))
        self.assertEqual(JpegImagePlugin.get_sampling(image), 2)

    def test_too_thin_to_judge_takes_the_default(self) -> None:
        """An output, or its sample, under 8 pixels a side cannot be judged:
        the format's default quality, and no score told."""
        data = photo_png("chelsea")
        for name, fmt in (
            ("1000x7-qhigh.jpg", "jpg"),
            ("7x300-qeco.webp", "webp"),
            ("2000x3-qgood.avif", "avif"),  # sampled: tiles 3 pixels high
        ):
            _, chosen = rendered(data, name)
            self.assertEqual(chosen, (formats.output(fmt).quality, None), name)
        _, chosen = rendered(data, "1000x8-qhigh.jpg")
        assert chosen is not None and chosen[1] is not None
        self.assertGreaterEqual(chosen[1], QUALITY_LEVELS["high"])

    def test_a_flat_picture_takes_the_lowest(self) -> None:
        flat = encode(Image.new("RGB", (300, 200), (40, 90, 160)), "PNG")
        _, chosen = rendered(flat, "w200-qhigh.jpg")
        assert chosen is not None and chosen[1] is not None
        self.assertEqual(chosen[0], perception.LOWEST)
        self.assertGreaterEqual(chosen[1], QUALITY_LEVELS["high"])

    def test_transparency_and_grey(self) -> None:
        """Judged on what the encoder is given: transparency kept where the
        format keeps it, flattened on white or the ``bg`` colour where not;
        grey stays grey. The output is the fixed quality's at its choice."""
        picture = corpus.photo("coffee").resize((300, 200))
        clear = picture.convert("RGBA")
        clear.putalpha(Image.linear_gradient("L").resize((300, 200)))
        for original, name, mode in (
            (clear, "w200-qgood.webp", "RGBA"),
            (clear, "w200-qgood.avif", "RGBA"),
            (clear, "w200-qgood.jpg", "RGB"),
            (clear, "w200-bg203040-qgood.webp", "RGB"),
            (picture, "w200-gray-qgood.jpg", "L"),
            (picture, "w200-gray-qgood.webp", "RGB"),  # WebP has no grey
        ):
            data = encode(original, "PNG")
            output, chosen = rendered(data, name)
            assert chosen is not None and chosen[1] is not None
            self.assertGreaterEqual(chosen[1], QUALITY_LEVELS["good"], name)
            self.assertEqual(Image.open(io.BytesIO(output)).mode, mode, name)
            self.assertEqual(at_quality(data, name, chosen[0]), output, name)

    def test_an_animation_takes_the_quality_of_its_first_frame(self) -> None:
        frames = [
            corpus.photo("rocket").resize((120, 80)).rotate(angle) for angle in (0, 20)
        ]
        out = io.BytesIO()
        frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50)
        data = out.getvalue()
        output, chosen = rendered(data, "w100-qgood.webp")
        assert chosen is not None
        animated = Image.open(io.BytesIO(output))
        self.assertEqual(getattr(animated, "n_frames", 1), 2)
        still, still_chosen = rendered(data, "w100-qgood.jpg")
        self.assertEqual(_decoded(still).size, (100, 67))
        self.assertIsNotNone(still_chosen)

    def test_a_budget_lowers_a_level(self) -> None:
        data = photo_png("astronaut")
        unbounded, chosen = rendered(data, "w300-qgood.jpg")
        assert chosen is not None
        budget = len(unbounded) // 2
        output, within = rendered(data, f"w300-maxbytes{budget}-qgood.jpg")
        assert within is not None
        self.assertLessEqual(len(output), budget)
        self.assertLess(within[0], chosen[0])
        self.assertIsNone(within[1])  # not the level's quality: not its score
        roomy, kept = rendered(data, f"w300-maxbytes{len(unbounded)}-qgood.jpg")
        self.assertEqual((roomy, kept), (unbounded, chosen))
