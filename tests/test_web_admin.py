import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from imageserver.web.admin import AdminApp, Readiness


class ProbeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.readiness = Readiness()
        self.client = StubTreq(AdminApp(self.readiness).app.resource())

    def get(self, path: str) -> tuple[int, object]:
        response = self.successResultOf(self.client.get("http://admin" + path))
        body = self.successResultOf(self.client.content(response))
        self.assertEqual(
            response.headers.getRawHeaders("Content-Type"), ["application/json"]
        )
        return response.code, json.loads(body)

    def test_live(self) -> None:
        self.assertEqual(self.get("/probe/live"), (200, {"message": "OK"}))

    def test_ready_follows_the_service_lifetime(self) -> None:
        self.assertEqual(self.get("/probe/ready")[0], 503)
        self.readiness.startService()
        self.assertEqual(self.get("/probe/ready"), (200, {"message": "OK"}))
        self.readiness.stopService()
        self.assertEqual(self.get("/probe/ready"), (503, {"message": "Shutting down"}))
        self.assertEqual(self.get("/probe/live")[0], 200)

    def test_metrics_route_is_reserved(self) -> None:
        self.assertEqual(self.get("/metrics")[0], 501)

    def test_unknown_route_is_json_404(self) -> None:
        self.assertEqual(self.get("/nothing"), (404, {"error": "not found"}))
