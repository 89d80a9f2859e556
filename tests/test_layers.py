"""The packages' layering (setup.cfg's import-linter contracts) and no import
cycles, checked on every run of the suite."""

import configparser
import os
import re
import subprocess
import sys

import grimp
from twisted.trial.unittest import SynchronousTestCase

from tests import CHECKOUT_DIR as ROOT


class LayerTests(SynchronousTestCase):
    def test_the_contracts_are_kept(self) -> None:
        """As `lint-imports` at the top of the checkout runs them."""
        run = subprocess.run(
            [sys.executable, "-c", "from importlinter.cli import "
             "lint_imports_command as c; c(['--no-cache'])"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("0 broken", run.stdout)

    def test_no_module_imports_itself_through_others(self) -> None:
        """Tarjan's strongly connected components of the module graph: every
        one a single module."""
        graph = grimp.build_graph("imageserver")
        imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
        order: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        circles: list[list[str]] = []

        def visit(module: str) -> None:
            order[module] = low[module] = len(order)
            stack.append(module)
            for other in imports[module]:
                if other not in order:
                    visit(other)
                    low[module] = min(low[module], low[other])
                elif other in stack:
                    low[module] = min(low[module], order[other])
            if low[module] == order[module]:
                circle = stack[stack.index(module) :]
                del stack[stack.index(module) :]
                if len(circle) > 1:
                    circles.append(sorted(circle))

        for module in sorted(imports):
            if module not in order:
                visit(module)
        self.assertEqual(circles, [])

    def test_the_architecture_page_draws_the_contracted_layers(self) -> None:
        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        contracted = [
            line.replace("imageserver.", "").replace(" ", "")
            for line in parser["importlinter:contract:layers"]["layers"].split("\n")
            if line.strip()
        ]
        with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
            page = f.read()
        drawing = page.split("## The packages")[1].split("```")[1]
        drawn = [
            re.split(r"\s{2,}", line.strip())[0].replace("/", "").replace(" ", "")
            for line in drawing.strip().split("\n")
        ]
        self.assertEqual(drawn, contracted)

    def test_every_module_is_on_a_layer(self) -> None:
        """A module left out of the contract is checked by nothing: each
        top-level module and package of imageserver is on one layer."""
        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        layered = {
            name.strip().removeprefix("imageserver.")
            for line in parser["importlinter:contract:layers"]["layers"].split("\n")
            for name in line.split("|")
            if name.strip()
        }
        package = os.path.join(ROOT, "imageserver")
        present = {
            name.removesuffix(".py")
            for name in os.listdir(package)
            if (name.endswith(".py") and name != "__init__.py")
            or os.path.isfile(os.path.join(package, name, "__init__.py"))
        }
        self.assertEqual(present - layered, set())
