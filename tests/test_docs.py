import ast
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Any

from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from imageserver import formats
from imageserver.config import Config, fields, options_table
from imageserver.imaging import geometry
from imageserver.metrics.events import Events
from imageserver.naming import OPTION_WORDS, ROTATIONS, VariantRules
from imageserver.runtime.shutdown import SENDING_SECONDS
from tests import CHECKOUT_DIR
from tests.support import AppHarness

DOCS = os.path.join(CHECKOUT_DIR, "docs")


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

    def test_operations_page_gives_the_shutdown_grace(self) -> None:
        with open(os.path.join(DOCS, "operations.md")) as f:
            page = " ".join(f.read().split())
        seconds = f"{SENDING_SECONDS:g} seconds"
        self.assertIn(f"get up to {seconds} more to leave", page)
        self.assertIn(f"`--processing_timeout` + {seconds} after the signal", page)

    def test_thumbor_page_example_is_signed_with_its_key(self) -> None:
        from imageserver.thumbor.urls import signature_of

        with open(os.path.join(DOCS, "thumbor.md")) as f:
            page = f.read()
        key = re.search(r"printf (\S+) > ", page)
        url = re.search(r"curl -O 'http://127.0.0.1:7000/([^/]+)/([^']+)'", page)
        assert key is not None and url is not None
        self.assertEqual(signature_of(url[2], key[1].encode()), url[1])

    def test_security_page_gives_the_thumbor_bounds(self) -> None:
        from imageserver.thumbor.plan import MAX_FILTER_DIGITS
        from imageserver.thumbor_paths import REMEMBERED_URLS

        with open(os.path.join(DOCS, "security.md")) as f:
            page = " ".join(f.read().split())
        self.assertIn(f"are at most {REMEMBERED_URLS:,}, the most lately used", page)
        self.assertIn(f"read to at most {MAX_FILTER_DIGITS} digits", page)

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

    def test_api_example_pictures_are_what_the_server_draws(self) -> None:
        """Drawn again, each picture is the committed one (to within an
        encoder's rounding): a change to the imaging that changes an example
        is caught, and `python docs/examples/make.py` draws them again."""
        import importlib.util

        from PIL import ImageChops, ImageStat

        spec = importlib.util.spec_from_file_location(
            "make_examples", os.path.join(DOCS, "examples", "make.py")
        )
        assert spec is not None and spec.loader is not None
        make = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(make)
        for name, drawn in make.pictures().items():
            with Image.open(os.path.join(DOCS, "examples", f"{name}.png")) as kept:
                difference = ImageChops.difference(
                    drawn.convert("RGBA"), kept.convert("RGBA")
                )
            mean = max(ImageStat.Stat(difference).mean)
            self.assertLess(mean, 1.0, f"{name}: run docs/examples/make.py")

    def test_api_option_table_is_the_grammar(self) -> None:
        with open(os.path.join(DOCS, "api.md")) as f:
            page = f.read()
        start = page.index("| option | with | meaning |")
        table = page[start : page.index("\n\n", start)]
        words = set(re.findall(r"`([a-z0-9]+)`", table))
        # Every option word of the grammar (its one list), quality aside.
        self.assertLessEqual(set(OPTION_WORDS) - {"q"}, words)
        rules = VariantRules(frozenset({"jpg"}), 80, 2000)
        # Words that take a number or a colour stand for a family of options.
        taking = {"fp", "blur", "rrggbb", "rrggbbaa", "crop", "cropf", "round",
                  "pixelate", "bg", "brightness", "brightnessm", "contrast",
                  "contrastm", "saturation", "saturationm", "pixelbox",
                  "blurbox", "wm", "maxbytes", "text", "textknauyri", "page",
                  "t", "s", "ms", "pct"}  # fmt: skip
        for word in words - taking - {"jpg", "w200"}:
            size = "w200" if word in {"noup", "trim", "flip", "flop", "sharp",
                                      "gray", *ROTATIONS} else "x200"  # fmt: skip
            self.assertIsNotNone(rules.parse(f"{size}-{word}.jpg"), word)


# -- examples are what the server answers ------------------------------------

ROOT = os.path.dirname(DOCS)
EXAMPLES = os.path.join(DOCS, "examples")
TWISTD = "from twisted.scripts.twistd import run; run()"
#: The uploads the README's and the docs' examples show, as files in the
#: checkout (their bytes, and so their hashes, do not depend on an encoder).
SAMPLES = ("photo.jpg", "other.png")


def pages() -> dict[str, str]:
    """README.md and every docs page, by path from the checkout root."""
    found = {}
    for path in ["README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT))]:
        with open(os.path.join(ROOT, path)) as f:
            found[path] = f.read()
    return found


def console_blocks(page: str) -> list[list[tuple[str, list[str]]]]:
    """Each ```console block: its commands (continued lines joined), each
    with the output lines shown after it."""
    blocks = []
    for block in re.findall(r"```console\n(.*?)```", page, re.DOTALL):
        commands: list[tuple[str, list[str]]] = []
        lines = iter(block.splitlines())
        for line in lines:
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\"):
                    command = command[:-1] + next(lines).strip()
                commands.append((command, []))
            elif commands:
                commands[-1][1].append(line)
        blocks.append(commands)
    return blocks


def sample_infos(case: SynchronousTestCase) -> dict[str, dict[str, Any]]:
    """info.json of each sample, as the server answers its upload, by hash."""
    app = AppHarness(case)
    infos = {}
    for name in SAMPLES:
        with open(os.path.join(EXAMPLES, name), "rb") as f:
            code, info = app.json("POST", "/p", data=f.read())
        case.assertEqual(code, 200, info)
        infos[info["hash"]] = info
    return infos


class ExamplesTests(SynchronousTestCase):
    def test_every_info_json_example_is_what_an_upload_answers(self) -> None:
        """Every one-line info.json in README.md and docs/ (a JSON object with
        a hash and a content type) is, field for field and in order, what the
        server answers for the sample of that hash."""
        infos = sample_infos(self)
        checked = 0
        for path, page in pages().items():
            for line in re.findall(r'^.*\{"hash": .*\}.*$', page, re.MULTILINE):
                shown, _ = json.JSONDecoder().raw_decode(line, line.index('{"hash"'))
                if "content_type" not in shown:
                    continue  # not an info.json (a batch item, say)
                self.assertIn(shown["hash"], infos, f"{path}: {line}")
                self.assertEqual(
                    list(shown.items()), list(infos[shown["hash"]].items()), path
                )
                checked += 1
        self.assertGreaterEqual(checked, 4)  # README twice, api.md, cli.md

    def test_the_readme_walkthrough_answers_as_shown(self) -> None:
        """The README's curl commands on the main port, in order, against the
        real app: each shown answer exactly, each other command a success."""
        app = AppHarness(self)
        ran = 0
        for commands in console_blocks(pages()["README.md"]):
            for command, shown in commands:
                words = shlex.split(command, comments=True)
                url = next(w for w in words if w.startswith("http"))
                if words[0] != "curl" or ":7000/" not in url or "source=" in url:
                    continue  # the admin port; a source on the Internet
                method, headers, data, include = "GET", {}, None, False
                for flag, value in zip(words, [*words[1:], ""], strict=True):
                    if flag == "-X":
                        method = value
                    elif flag == "-H":
                        name, _, text = value.partition(": ")
                        headers[name] = [text]
                    elif flag == "--data-binary":
                        method = "POST" if method == "GET" else method
                        with open(os.path.join(ROOT, value.lstrip("@")), "rb") as f:
                            data = f.read()
                    elif flag == "-i":
                        include = True
                path = url.split(":7000", 1)[1]
                response, body = app.request(method, path, headers=headers, data=data)
                ran += 1
                if include:
                    status = shown[0].split(" ", 2)
                    self.assertEqual(response.code, int(status[1]), command)
                    shown = shown[-1:]
                else:
                    self.assertLess(response.code, 300, (command, body))
                if shown:
                    self.assertEqual(json.loads(body), json.loads(shown[0]), command)
        self.assertGreaterEqual(ran, 12)

    def test_documented_commands_print_what_is_shown(self) -> None:
        """Every `imageserver` or `twistd` command shown with its output, run
        (in a folder holding the samples) as a user runs it."""
        root = os.path.abspath(self.mktemp())
        bin_ = os.path.join(root, "bin")
        os.makedirs(bin_)
        for name in SAMPLES:
            shutil.copy(os.path.join(EXAMPLES, name), root)
        for name, run in (("imageserver", "-m imageserver"),
                          ("twistd", f"-c '{TWISTD}'")):  # fmt: skip
            with open(os.path.join(bin_, name), "w") as f:
                f.write(f'#!/bin/sh\nexec "{sys.executable}" {run} "$@"\n')
            os.chmod(os.path.join(bin_, name), 0o755)
        env = {**os.environ, "PYTHONPATH": ROOT}
        env["PATH"] = bin_ + os.pathsep + env["PATH"]
        ran = 0
        for path, page in pages().items():
            for commands in console_blocks(page):
                for command, shown in commands:
                    program = re.sub(r"^(\w+=\S+ )*", "", command).split()[0]
                    if program not in ("imageserver", "twistd") or not shown:
                        continue
                    done = subprocess.run(
                        command, shell=True, cwd=root, env=env, timeout=60,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    )  # fmt: skip
                    # Lines in any order: images are reported as they finish.
                    self.assertEqual(
                        sorted(done.stdout.splitlines()), sorted(shown), (path, command)
                    )
                    ran += 1
        self.assertGreaterEqual(ran, 4)


def listed(text: str) -> set[str]:
    """The names in a list such as "`jpg`, `png` (a note) and `avif`"."""
    text = re.sub(r"\([^)]*\)", "", text).replace("`", "")
    return {w.strip() for w in re.split(r",| and | or ", text) if w.strip()}


#: What the docs call each input format of the format table.
INPUT_NAMES = {"JPEG": "JPEG", "PNG": "PNG", "GIF": "GIF", "WebP": "WEBP",
               "AVIF": "AVIF", "TIFF": "TIFF", "BMP": "BMP", "HEIC": "HEIF",
               "HEIF/HEIC": "HEIF", "JPEG XL": "JXL", "WebM": "WEBM"}  # fmt: skip


class FormatListsTests(SynchronousTestCase):
    """Every list of formats in the docs is the format table's."""

    def test_output_formats(self) -> None:
        outputs = formats.OUTPUTS
        canonical = {e for e, f in outputs.items() if f.extension == e} - {"jpeg"}
        animated = {e for e in canonical if outputs[e].animation}
        cases = [
            ("docs/configuration.md",
             r"picks from the formats the server can encode: (.*?)\.\n",
             set(outputs)),
            ("docs/operations.md", r"the same, by format: (.*?), or `other`",
             set(outputs)),
            ("docs/api.md", r"Transparency is kept in (.*?), and flattened",
             {e for e in canonical if outputs[e].alpha}),
            ("docs/api.md", r"Quality applies to\s+(.*?)\.",
             {e for e in canonical if outputs[e].lossy}),
            ("docs/api.md", r"stay animated in (.*?)\s+variants", animated),
            ("docs/security.md", r"keep their frames in (.*?) variants", animated),
        ]  # fmt: skip
        texts = pages()
        for path, pattern, expected in cases:
            match = re.search(pattern, texts[path], re.DOTALL)
            assert match is not None, (path, pattern)
            self.assertEqual(listed(match[1]), expected, (path, match[1]))
        help_ = {f.name: f.metadata["help"] for f in fields()}
        known = help_["extensions"].split("Known: ")[1].rstrip(".")
        self.assertEqual(known.split(","), list(outputs))
        api = texts["docs/api.md"]
        default = re.search(r"\(default ([a-z,]+); (.*?) are also", api)
        assert default is not None
        self.assertEqual(default[1].split(","), list(Config.extensions))
        self.assertEqual(listed(default[2]), set(outputs) - set(Config.extensions))

    def test_input_formats(self) -> None:
        cases = [
            ("README.md", r"Originals may be (.*?);"),
            ("docs/api.md", r"Originals may be (.*?);"),
            ("docs/api.md", r"Accepted originals: (.*?)\. "),
            ("docs/security.md", r"- Only (.*?) are decoded"),
        ]
        texts = pages()
        for path, pattern in cases:
            match = re.search(pattern, texts[path], re.DOTALL)
            assert match is not None, (path, pattern)
            names = listed(" ".join(match[1].split()))
            self.assertEqual(
                {INPUT_NAMES.get(n, n) for n in names}, set(formats.INPUTS), path
            )


def message_templates() -> list[tuple[re.Pattern[str], str]]:
    """Every string the server's code spells, as a pattern (an f-string's
    fields match anything) and as a sample (its fields as ``X``)."""
    found = []
    for path in glob.glob("imageserver/**/*.py", root_dir=ROOT, recursive=True):
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((re.compile(re.escape(node.value)), node.value))
            elif isinstance(node, ast.JoinedStr):
                texts = [v.value if isinstance(v, ast.Constant) else None
                         for v in node.values]  # fmt: skip
                pattern = "".join(".*" if t is None else re.escape(t) for t in texts)
                sample = "".join("X" if t is None else t for t in texts)
                if len(sample) - texts.count(None) < 8:
                    continue  # mostly fields (f"{a}: {b}"): it spells anything
                found.append((re.compile(pattern, re.DOTALL), sample))
    return found


def is_spelt_by(shown: str, templates: list[tuple[re.Pattern[str], str]]) -> bool:
    """Whether the code makes the message ``shown`` (whose ``...`` stands for
    what the docs leave out, and whose other words may fill a field)."""
    elided = re.compile(".*".join(re.escape(p) for p in shown.split("...")))
    return any(
        pattern.fullmatch(shown) or elided.fullmatch(sample)
        for pattern, sample in templates
    )


class MessagesTests(SynchronousTestCase):
    def test_every_error_and_message_shown_is_one_the_server_makes(self) -> None:
        templates = message_templates()
        self.assertFalse(is_spelt_by("the storage is fine, really", templates))
        shown = []
        for path, page in pages().items():
            for _kind, text in re.findall(
                r'\{"(error|message)": "((?:[^"\\]|\\.)*?)"\}', page, re.DOTALL
            ):
                text = " ".join(text.split())
                if text != "what was wrong":
                    shown.append((path, text))
        self.assertGreater(len(shown), 15)
        for path, text in shown:
            self.assertTrue(is_spelt_by(text, templates), f"{path}: {text!r}")
