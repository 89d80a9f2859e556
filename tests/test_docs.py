import os

from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import options_table

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


class DocsTests(SynchronousTestCase):
    def test_configuration_page_lists_every_option_with_its_default(self) -> None:
        with open(os.path.join(DOCS, "configuration.md")) as f:
            page = f.read()
        self.assertIn(options_table(), page)
