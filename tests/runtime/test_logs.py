import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imageserver.runtime.logs import JSONLines


class JSONLinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = io.StringIO()
        self.log = Logger(namespace="imageserver.test", observer=JSONLines(self.out))

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def test_one_flat_object_per_event_with_its_fields(self) -> None:
        self.log.info(
            "GET {uri} {status}", uri="/p/x/w200.jpg", status=200, duration=0.01
        )
        (record,) = self.records()
        self.assertEqual(record["message"], "GET /p/x/w200.jpg 200")
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "imageserver.test")
        self.assertEqual((record["uri"], record["status"], record["duration"]),
                         ("/p/x/w200.jpg", 200, 0.01))  # fmt: skip
        self.assertTrue(str(record["time"]).endswith("+00:00"))

    def test_failures_carry_their_traceback(self) -> None:
        try:
            raise ValueError("broken")
        except ValueError:
            self.log.failure("rendering failed", Failure(), level=LogLevel.error)
        (record,) = self.records()
        self.assertEqual(record["level"], "error")
        self.assertIn("ValueError: broken", str(record["traceback"]))

    def test_values_json_cannot_hold_become_text(self) -> None:
        self.log.info("stored {key}", key=b"bytes", when=object())
        (record,) = self.records()
        self.assertEqual(record["key"], "b'bytes'")
