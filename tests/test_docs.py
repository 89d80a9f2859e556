import os

from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import options_table
from imageserver.events import Events

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
