import os

from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import options_table

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
