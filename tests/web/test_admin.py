import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from imageserver.metrics.events import Events
from imageserver.web.admin import AdminApp, Readiness


class ProbeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.readiness = Readiness()
        self.events = Events()
        self.client = StubTreq(
            AdminApp(self.readiness, self.events.registry).app.resource()
        )

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

    def metrics(self, accept: str = "") -> tuple[str, str]:
        headers = {"Accept": accept} if accept else {}
        response = self.successResultOf(
            self.client.get("http://admin/metrics", headers=headers)
        )
        body = self.successResultOf(self.client.content(response)).decode()
        return response.headers.getRawHeaders("Content-Type")[0], body

    def test_metrics_in_prometheus_text_format(self) -> None:
        self.events.variant("webp", "generated")
        self.events.variant("webp", "generated")
        content_type, body = self.metrics()
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"))
        self.assertIn(
            'imageserver_variants_total{format="webp",outcome="generated"} 2.0', body
        )
        self.assertIn('imageserver_build_info{version="', body)

    def test_metrics_in_openmetrics_when_asked(self) -> None:
        content_type, body = self.metrics("application/openmetrics-text; version=1.0.0")
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith("# EOF\n"))

    def test_unknown_route_is_json_404(self) -> None:
        self.assertEqual(self.get("/nothing"), (404, {"error": "not found"}))
