import os
import re

from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver import geometry
from imageserver.config import options_table
from imageserver.events import Events
from imageserver.naming import GRAVITIES, ROTATIONS, VariantRules

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


class DocsTests(SynchronousTestCase):
    def test_configuration_page_lists_every_option_with_its_default(self) -> None:
        with open(os.path.join(DOCS, "configuration.md")) as f:
            page = f.read()
        self.assertIn(options_table(), page)

    def test_architecture_page_names_every_module(self) -> None:
        with open(os.path.join(DOCS, "architecture.md")) as f:
            page = f.read()
        package = os.path.join(os.path.dirname(DOCS), "imageserver")
        missing = []
        for folder, _, files in os.walk(package):
            for name in files:
                relative = os.path.relpath(os.path.join(folder, name), package)
                if name.endswith(".py") and f"imageserver/{relative}" not in page:
                    missing.append(relative)
        self.assertEqual(missing, [], "modules docs/architecture.md leaves out")

    def test_operations_page_lists_every_metric(self) -> None:
        with open(os.path.join(DOCS, "operations.md")) as f:
            page = f.read()
        missing = []
        for family in Events().registry.collect():
            names = {family.name, f"{family.name}_total", f"{family.name}_info"}
            if family.name.startswith("process_"):
                names.add("process_*")
            if not any(f"`{name}`" in page for name in names):
                missing.append(family.name)
        self.assertEqual(missing, [])

    def test_api_examples_are_canonical_and_pictured(self) -> None:
        with open(os.path.join(DOCS, "api.md")) as f:
            page = f.read()
        table = page.split("<!-- examples -->")[1].strip().split("\n\n")[0]
        rules = VariantRules(frozenset({"jpg"}), 80, 2000)
        rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| !\[\]\((examples/[^)]+)\) \|$",
                          table, re.MULTILINE)  # fmt: skip
        self.assertGreater(len(rows), 10)
        for name, picture in rows:
            variant = rules.parse(name)  # canonical, or this raises
            assert variant is not None
            self.assertEqual(picture, f"examples/{name}.png")
            with Image.open(os.path.join(DOCS, picture)) as image:
                size = image.size
            concrete = variant.as_format("jpg")
            self.assertEqual(size, geometry.output_size(concrete, 480, 320), name)

    def test_api_option_table_is_the_grammar(self) -> None:
        with open(os.path.join(DOCS, "api.md")) as f:
            page = f.read()
        start = page.index("| option | with | meaning |")
        table = page[start : page.index("\n\n", start)]
        words = set(re.findall(r"`([a-z0-9]+)`", table))
        expected = {"fit", "pad", "noup", "smart", "trim", "flip", "flop", "sharp",
                    "gray", "fp", "blur", *GRAVITIES, *ROTATIONS}  # fmt: skip
        self.assertLessEqual(expected, words)
        rules = VariantRules(frozenset({"jpg"}), 80, 2000)
        for word in words - {"fp", "blur", "rrggbb", "rrggbbaa", "jpg", "w200"}:
            size = "w200" if word in {"noup", "trim", "flip", "flop", "sharp",
                                      "gray", *ROTATIONS} else "x200"  # fmt: skip
            self.assertIsNotNone(rules.parse(f"{size}-{word}.jpg"), word)
