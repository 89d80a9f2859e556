from ipaddress import ip_address

from twisted.trial.unittest import SynchronousTestCase

from imageserver.sources.addresses import SourcePolicy, refusal, source_host


class RefusalTests(SynchronousTestCase):
    def test_public_addresses_are_allowed(self) -> None:
        for address in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "1.1.1.1"):
            self.assertIsNone(refusal(address), address)

    def test_everything_internal_is_refused(self) -> None:
        cases = {
            "127.0.0.1": "loopback",
            "127.8.9.10": "loopback",
            "::1": "loopback",
            "0.0.0.0": "unspecified",
            "::": "unspecified",
            "10.1.2.3": "private",
            "172.16.0.1": "private",
            "192.168.1.1": "private",
            "fc00::1": "private",
            "169.254.1.1": "link-local",
            "fe80::1": "link-local",
            "169.254.169.254": "a cloud metadata address",
            "fd00:ec2::254": "a cloud metadata address",
            "100.100.100.200": "a cloud metadata address",
            "224.0.0.1": "multicast",
            "ff02::1": "multicast",
            "100.64.0.1": "not publicly routable",
            "240.0.0.1": "reserved",
            "192.0.2.1": "private",
        }
        for address, reason in cases.items():
            self.assertEqual(refusal(address), reason, address)

    def test_ipv4_inside_ipv6_is_unwrapped(self) -> None:
        for address in ("::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1",
                        "::ffff:169.254.169.254"):  # fmt: skip
            self.assertIsNotNone(refusal(address), address)
        self.assertIsNone(refusal("::ffff:8.8.8.8"))


class PolicyTests(SynchronousTestCase):
    def test_default_refuses_private(self) -> None:
        self.assertEqual(
            SourcePolicy().address_refusal("images.internal", "10.0.0.5"),
            "source host images.internal resolves to 10.0.0.5, which is private; "
            "such sources are fetched only when the server runs with "
            "--allow_private_sources or --allow_networks",
        )

    def test_allow_private(self) -> None:
        policy = SourcePolicy(allow_private=True)
        self.assertIsNone(policy.address_refusal("localhost", "127.0.0.1"))

    def test_allowed_networks(self) -> None:
        policy = SourcePolicy(allowed_networks=("10.1.2.0/24",))
        self.assertIsNone(policy.address_refusal("h", "10.1.2.3"))
        self.assertIsNotNone(policy.address_refusal("h", "10.1.3.3"))

    def test_allowlist_of_host_patterns(self) -> None:
        policy = SourcePolicy(allowlist=("*.example.com", "cdn.example.net"))
        self.assertIsNone(policy.host_refusal("images.example.com"))
        self.assertIsNone(policy.host_refusal("CDN.example.net"))
        self.assertEqual(
            policy.host_refusal("example.org"),
            "source host example.org is not in the allowlist",
        )
        self.assertIsNone(SourcePolicy().host_refusal("anything.at.all"))


class SourceHostTests(SynchronousTestCase):
    def test_addresses_and_names_as_the_policy_sees_them(self) -> None:
        """Addresses are compared as addresses: Python 3.13 writes an
        IPv4-mapped one ``::ffff:127.0.0.1`` where 3.11 wrote ``::ffff:7f00:1``."""
        for raw, address in (
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
            ("[fe80::1%25eth0]", "fe80::1%eth0"),
            ("%31%32%37.0.0.1", "127.0.0.1"),
        ):
            host = source_host(raw)
            self.assertEqual(ip_address(host), ip_address(address), raw)
            self.assertEqual(host, str(ip_address(address)), raw)
        for raw, name in (
            ("Images.Example.COM", "images.example.com"),
            ("b%C3%BCcher.example", "bücher.example"),
        ):
            self.assertEqual(source_host(raw), name, raw)

    def test_a_bad_host_name_is_said_in_words(self) -> None:
        rule = "a host name is letters, digits and hyphens, in labels separated by dots"
        for raw, reason in (
            ("exa mple", f"' ' (U+0020) is not allowed; {rule}"),
            ("a_b.example", f"'_' (U+005F) is not allowed; {rule}"),
            ("\u2603.net", f"'\u2603' (U+2603) is not allowed; {rule}"),
            ("-a.example", "label must not start or end with a hyphen"),
        ):
            with self.assertRaises(ValueError, msg=raw) as caught:
                source_host(raw)
            self.assertEqual(
                str(caught.exception),
                f"source host {raw!r} is not a valid host name: {reason}",
            )

    def test_malformed_hosts(self) -> None:
        for raw in ("[zz::1]", "a:b", "%ff", "a%25b", "x" * 64 + ".com", ""):
            with self.assertRaises(ValueError, msg=raw):
                source_host(raw)
