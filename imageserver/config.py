"""Config: every setting, its default and its help, defined once.

The command lines (`imageserver.options`) and the docs' option table are
generated from the fields below.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from imageserver import formats
from imageserver.access.cors import CorsPolicy
from imageserver.access.rates import Rates
from imageserver.access.signing import secrets_of
from imageserver.images import RenderPolicy
from imageserver.imaging.documents import (
    COSTLY_AFTER,
    VIDEO_CODECS,
    WALL_PER_CPU,
    WALL_SLACK,
    DocumentLimits,
)
from imageserver.imaging.renderer import DECODER_MAX_PIXELS, Limits
from imageserver.imaging.svg import SvgLimits
from imageserver.naming import (
    OUTPUT_FORMATS,
    QUALITY_LEVELS,
    ImageId,
    Presets,
    VariantRules,
    ascii_digits,
    check_namespace_option,
    parse_watermarks,
)
from imageserver.runtime import endpoints
from imageserver.sources.addresses import SourcePolicy
from imageserver.sources.origins import OriginSpec, parse_origins
from imageserver.storage import IMMUTABLE, PRESET_LIFETIME, REVALIDATE

CANNED_ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)


def _threads(cpus: int, workers: int) -> int:
    """Processing threads per process when not given: one per CPU for one
    process; with workers, twice each one's share of the CPUs and at least
    2. Connections are spread at random, so a worker may hold more than its
    share of the load and needs threads to spare; yet all workers together
    never decode more than 2 x CPUs images at once (memory, caches).
    """
    if workers <= 1:
        return cpus
    return max(2, -(-2 * cpus // workers))


def _local_workers(scheduler: str) -> int | None:
    """N of ``local:N``, or None for another value."""
    prefix, _, count = scheduler.partition(":")
    if prefix == "local" and ascii_digits(count) and int(count) >= 1:
        return int(count)
    return None


def _cpu_count() -> int:
    """CPUs this process may use: those it may run on, held to its cgroup's
    CPU quota (a container's --cpus, a Kubernetes limit, systemd's
    CPUQuota=), rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    quota = cpu_quota()
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def cpu_quota(
    root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup"
) -> float | None:
    """The CPUs a cgroup CPU quota grants this process: the least along its
    cgroup's path up to ``root``, from cgroup v2's ``cpu.max`` or v1's
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; None when there is none
    (or no cgroup to read)."""
    try:
        with open(membership) as f:
            lines = [line.strip().split(":", 2) for line in f]
    except OSError:
        return None
    # (the folder of the hierarchy, the cgroup's path in it, its files)
    places: list[tuple[str, str, tuple[str, ...]]] = []
    for fields in lines:
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            places.append((root, path, ("cpu.max",)))
        elif "cpu" in controllers.split(","):
            for folder in (controllers, "cpu", "cpu,cpuacct"):
                if os.path.isdir(os.path.join(root, folder)):
                    v1 = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
                    places.append((os.path.join(root, folder), path, v1))
                    break
    least = None
    for base, path, files in places:
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), -1, -1):
            cpus = _quota_at(os.path.join(base, *parts[:depth]), files)
            if cpus is not None:
                least = cpus if least is None else min(least, cpus)
    return least


def _quota_at(folder: str, files: tuple[str, ...]) -> float | None:
    """The CPUs the quota in ``folder`` grants, or None (no file, no quota:
    "max" or -1)."""
    try:
        texts = []
        for name in files:
            with open(os.path.join(folder, name)) as f:
                texts.append(f.read())
        quota, period = " ".join(texts).split()[:2]
        cpus = int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 else None


def _http_url(text: str) -> bool:
    """Whether ``text`` is an http(s) URL with a host and, if any, a port
    number that is one."""
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 (raises for a port out of range)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def setting(
    default: Any,
    help: str,
    *,
    server_only: bool = False,
    command_only: bool = False,
    secret: bool = False,
    **kwargs: Any,
) -> Any:
    """A Config field: its default, its one-line help, and whether only the
    server uses it (the command line leaves such options out), or only the
    command line (the server leaves it out). A ``secret`` one (a credential,
    or where one is read from) never leaves the process: not in a Dask task,
    not in a log line."""
    metadata = {
        "help": help,
        "server_only": server_only,
        "command_only": command_only,
        "secret": secret,
    }
    return field(default=default, metadata=metadata, **kwargs)


#: The most frames a video's preview may have (FFmpeg's seeks in one job
#: began to fail at about 115).
MOST_PREVIEW_FRAMES = 100
#: The least --rasterise_memory: its libraries' own space, and room to work.
MIN_RASTERISE_MEMORY = 512 * 1024**2


@dataclass(frozen=True)
class Config:
    port: str = setting(
        "7000",
        "Main HTTP port: a number (bound to --listen) or a Twisted endpoint "
        "such as tcp:7000:interface=0.0.0.0 or unix:/run/imageserver.sock.",
        server_only=True,
    )
    listen: str = setting(
        "127.0.0.1",
        "Address a numeric --port or --admin_port binds to.",
        server_only=True,
    )
    admin_port: str = setting(
        "tcp:7002:interface=127.0.0.1",
        "Admin port for probes: a number, a Twisted endpoint, or 'none'.",
        server_only=True,
    )
    local_base_path: str = setting(
        "public", "Directory where originals, info.json and variants are kept."
    )
    outputs: tuple[str, ...] = setting(
        (),
        "Variants generated on every upload, e.g. 'x300.jpg,x300.webp'; "
        "namespace:variant for one namespace only, e.g. 'avatars:x64.webp'.",
    )
    extensions: tuple[str, ...] = setting(
        ("jpg", "png", "gif", "webp", "avif"),
        "Output formats served; other variant extensions are 404. "
        f"Known: {','.join(OUTPUT_FORMATS)}.",
    )
    auto_formats: tuple[str, ...] = setting(
        ("avif", "webp", "jxl"),
        "Formats .auto sends, best first, to a client whose Accept names them "
        "(and that --extensions serves); others get jpg, or png with alpha.",
    )
    default_quality: str = setting(
        "0",
        "Quality (1-100) of every lossy format when a name has no -qN; 0: each "
        "format's own default, chosen by bytes at equal fidelity "
        "(docs/performance.md); auto:high, auto:good or auto:eco: the level's "
        "quality, chosen per variant by how it looks (as -qgood is).",
    )
    maximum_width: int = setting(
        1000, "Largest width or height a variant name may ask for."
    )
    max_source_bytes: int = setting(
        50 * 1024 * 1024, "Largest upload body or source download, in bytes."
    )
    max_source_pixels: int = setting(
        50_000_000,
        "Largest original, in pixels (width x height, read from its header "
        "before decoding); also the largest output, all the frames of an "
        "animated one together.",
    )
    max_animation_frames: int = setting(
        300,
        "Frames an animation keeps in gif, webp, png and avif variants (all "
        "frames together at most 2 x --max_source_pixels, and at most "
        "--max_pixels_per_byte per byte of the file above 4 megapixels); a "
        "longer one is served as its first frame.",
    )
    max_pixels_per_byte: int = setting(
        1000,
        "Pixels each byte of an original may stand for, for originals over 4 "
        "megapixels (a 7000x7000 image in 140 bytes is refused); 0: no limit.",
    )
    rasterise_seconds: float = setting(
        10.0,
        "CPU seconds one job of the rasteriser (an SVG drawn, a PDF page, a "
        "video's frame or preview) may take, counted in whole seconds (up to "
        "1 s more); past it the job's process is killed and the request "
        "refused (415). A file past the rasteriser's limits (this one, "
        f"--rasterise_memory) {COSTLY_AFTER} times is not drawn again by the "
        "process. A job still running after "
        f"{WALL_PER_CPU:g} x this + {WALL_SLACK:g} s of wall-clock time waited "
        "for a CPU: it is killed, and the request is a 503 (docs/security.md).",
    )
    rasterise_memory: int = setting(
        2 * 1024**3,
        "Address space of a rasteriser process, in bytes, at least "
        f"{MIN_RASTERISE_MEMORY} (512 MiB; its libraries take about 0.25 GB "
        "of it before a job).",
    )
    max_pdf_pages: int = setting(
        2000, "Pages a PDF original may have; one with more is refused."
    )
    max_video_seconds: float = setting(
        4 * 3600.0, "Seconds a video original may last; a longer one is refused."
    )
    max_video_decoded_frames: int = setting(
        120,
        "Frames decoded for one video picture, from the key frame before the "
        "time asked for (a preview's frames an equal share each); where they "
        "run out, the last decoded frame is served.",
    )
    video_codecs: tuple[str, ...] = setting(
        ("h264", "hevc", "vp8", "vp9", "av1"),
        "Video codecs decoded; a video in another is refused.",
    )
    video_preview_frames: int = setting(
        10,
        "Frames of a video's animated preview (gif, webp, png, avif variants "
        "without -t), one from each of equal parts of its length, 0.5 s each; "
        "at most 100.",
    )
    max_svg_elements: int = setting(
        20_000,
        "Elements an SVG original may draw, counting each use element's "
        "copy; also the most its source may hold.",
    )
    max_svg_depth: int = setting(
        64,
        "Elements an SVG may nest inside one another, its root counted "
        "(svg > defs > linearGradient > stop is 4).",
    )
    max_svg_filters: int = setting(
        32,
        "Filter primitives (feGaussianBlur, ...) an SVG original may have; 0: none.",
    )
    workers: int = setting(
        0,
        "Processes serving the main port; 0: one per CPU this process may use "
        "(held to its cgroup's CPU quota). "
        "Above 1, the twistd process binds the ports, keeps the admin port and "
        "supervises the workers, each with --processor_concurrency threads.",
        server_only=True,
    )
    debug_worker: int = setting(
        1,
        "With --workers above 1: the worker that runs the manhole and whose "
        "/debug/* the admin port serves (--profile), 1 to --workers.",
        server_only=True,
    )
    processor_concurrency: int = setting(
        0,
        "Threads decoding and encoding images (in each worker); 0: one per "
        "CPU, with --workers 2 x CPUs / workers (at least 2).",
    )
    io_concurrency: int = setting(
        8, "Threads reading and writing storage (and reading bucket origins)."
    )
    memory_cache_bytes: int = setting(
        32 * 1024 * 1024,
        "Bytes of recently used variants, originals and info.json kept in "
        "memory, for the host (each of --workers keeps its share); 0: none.",
        server_only=True,
    )
    uploader: str = setting(
        "",
        "Remote store: 's3', or 'noop' for the local disk alone; "
        "empty means s3 when --aws_bucket is given.",
    )
    aws_bucket: str = setting("", "S3 bucket holding originals and variants.")
    aws_region: str = setting(
        "", "S3 region; default: AWS_DEFAULT_REGION, ~/.aws/config, or us-east-1."
    )
    aws_access_key_id: str = setting(
        "",
        "S3 access key; default: AWS_ACCESS_KEY_ID or the AWS config files.",
        secret=True,
    )
    aws_secret_key: str = setting(
        "",
        "S3 secret key; default: AWS_SECRET_ACCESS_KEY or the AWS config files "
        "(prefer those: a flag shows in the process list).",
        repr=False,
        secret=True,
    )
    s3_endpoint_url: str = setting(
        "",
        "Endpoint of an S3-compatible store (MinIO, Ceph, R2, ...), also of "
        "bucket origins without their own; empty: AWS.",
    )
    s3_acl: str = setting(
        "", "Canned ACL for stored objects, e.g. public-read; empty sends none."
    )
    remote_base_path: str = setting(
        "", "Prefix of every key in the bucket, e.g. 'images' for images/{ns}/..."
    )
    remote_base_url: str = setting(
        "", "Public URL of the bucket (accepted for compatibility; reads use S3)."
    )
    uploader_concurrency: int = setting(
        10, "Threads (and connections) talking to the remote store."
    )
    shutdown_timeout: float = setting(
        30.0,
        "Seconds a stop gives requests in flight, writes not yet made and "
        "pending uploads to the bucket to finish (docs/operations.md, "
        "Shutdown).",
    )
    enable_statsd: bool = setting(
        False, "Send statsd metrics (counters, timers).", server_only=True
    )
    statsd_host: str = setting("127.0.0.1", "statsd daemon host.", server_only=True)
    statsd_port: int = setting(8125, "statsd daemon UDP port.", server_only=True)
    statsd_prefix: str = setting(
        "image_server.", "Prefix of every statsd name.", server_only=True
    )
    otlp_endpoint: str = setting(
        "",
        "Export traces (OpenTelemetry spans of each request and its stages) "
        "to this OTLP/HTTP traces URL, such as "
        "http://127.0.0.1:4318/v1/traces; empty: no tracing "
        "(docs/operations.md). Needs the 'tracing' extra.",
        server_only=True,
    )
    otlp_service_name: str = setting(
        "imageserver", "The service.name of the exported spans.", server_only=True
    )
    otlp_sample_ratio: float = setting(
        1.0,
        "Share of requests traced (0 to 1), unless the caller's traceparent "
        "says whether it samples.",
        server_only=True,
    )
    log_format: str = setting(
        "text",
        "Logs as 'text', or 'json': one object per line on standard output.",
        server_only=True,
    )
    profile: bool = setting(
        False,
        "Serve /debug/profile, /debug/heap and /debug/threads on the admin port "
        "(and trace the heap).",
        server_only=True,
    )
    manhole: str = setting(
        "",
        "SSH manhole endpoint, e.g. tcp:7003:interface=127.0.0.1 (a number binds "
        "to 127.0.0.1); empty: off.",
        server_only=True,
    )
    manhole_keys: str = setting(
        "",
        "authorized_keys file of the public keys allowed into the manhole.",
        server_only=True,
        secret=True,
    )
    manhole_passwords: str = setting(
        "",
        "File of user:bcrypt-hash lines allowed into the manhole.",
        server_only=True,
        secret=True,
    )
    manhole_host_keys: str = setting(
        "manhole-host-keys",
        "Directory of the manhole's SSH host keys (made if absent).",
        server_only=True,
    )
    manhole_allow_remote: bool = setting(
        False,
        "Let --manhole listen on an interface other than loopback.",
        server_only=True,
    )
    profile_allow_remote: bool = setting(
        False,
        "Let --profile serve /debug/* on an admin port beyond loopback.",
        server_only=True,
    )
    max_redirects: int = setting(
        3, "Redirects a source URL (or a web origin's object) may take."
    )
    allow_private_sources: bool = setting(
        False,
        "Let source URLs and web origins reach loopback, private, link-local "
        "and metadata addresses (off: a source URL there is a 403, a web "
        "origin there a start-up error).",
    )
    allow_networks: tuple[str, ...] = setting(
        (),
        "Networks source URLs and web origins may reach despite being private, "
        "e.g. 10.1.2.0/24.",
    )
    source_allowlist: tuple[str, ...] = setting(
        (), "Host name patterns source URLs must match, e.g. '*.example.com'."
    )
    origin: tuple[str, ...] = setting(
        (),
        "Namespaces served from where their images already live: NAME=URL "
        "pairs (comma-separated); URL file:///dir/, http(s)://host/prefix/ "
        "or s3://bucket/prefix/ (docs/origins.md).",
    )
    origin_ttl: float = setting(
        3600.0,
        "Seconds a path of an origin is served as stored before the origin is "
        "asked again (in the background: what is stored is served meanwhile).",
    )
    origin_missing_ttl: float = setting(
        60.0,
        "Seconds an origin's 'no such object' is remembered.",
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        "Other origins whose pages may read the answers (CORS): * or origins "
        "such as https://shop.example, https://*.shop.example "
        "(comma-separated); reads only, never writes (docs/api.md).",
        server_only=True,
    )
    client_hints: bool = setting(
        False,
        "Read client hints (Sec-CH-DPR, Sec-CH-Width, and the legacy DPR, "
        "Width) for names with -ch, which choose their density and width "
        "from them, and ask browsers for them (Accept-CH).",
        server_only=True,
    )
    thumbor: bool = setting(
        False,
        "Answer thumbor's URLs (/unsafe/... and /SIGNATURE/...) on the main "
        "port, from --thumbor_loader or the web origins (docs/thumbor.md).",
        server_only=True,
    )
    thumbor_security_key: str = setting(
        "",
        "thumbor's SECURITY_KEY: the keys thumbor URLs may be signed with, "
        "comma-separated (several while one is rotated).",
        repr=False,
        server_only=True,
        secret=True,
    )
    thumbor_allow_unsafe: bool = setting(
        False,
        "thumbor's ALLOW_UNSAFE_URL: answer unsigned thumbor URLs (/unsafe/...).",
        server_only=True,
    )
    thumbor_loader: str = setting(
        "",
        "The --origin namespace thumbor URLs' images are read from, as "
        "thumbor's LOADER (file: FILE_LOADER_ROOT_PATH; web: the HTTP "
        "loader's host; s3: a bucket); empty: an image URL is read from the "
        "web origin whose URL it starts with (ALLOWED_SOURCES).",
        server_only=True,
    )
    thumbor_quality: int = setting(
        80,
        "thumbor's QUALITY: of jpg, webp and avif answers without quality().",
        server_only=True,
    )
    thumbor_auto_webp: bool = setting(
        False,
        "thumbor's AUTO_WEBP: WebP for clients that accept it, unless "
        "format() says otherwise (with Vary: Accept).",
        server_only=True,
    )
    thumbor_auto_avif: bool = setting(
        False,
        "thumbor's AUTO_AVIF: AVIF for clients that accept it (after WebP "
        "when both are on).",
        server_only=True,
    )
    namespace_quota_bytes: int = setting(
        0,
        "Bytes each namespace may store (originals, variants, files); uploads, "
        "files and batches into a namespace that stores as much are a 507; "
        "counted in the store, shared by every host (docs/security.md); 0: "
        "no quota.",
        server_only=True,
    )
    quota_interval: float = setting(
        60.0,
        "Seconds between two counts of a namespace's stored bytes in the "
        "store, when it is written to (what a process stores in between is "
        "added as it goes).",
        server_only=True,
    )
    namespace_render_rate: float = setting(
        0.0,
        "Requests a second each namespace may make for variants not made yet "
        "(cold renders; a process that makes any counts as one), for the "
        "host's workers together; more are a 429 with Retry-After; 0: no limit.",
        server_only=True,
    )
    namespace_upload_rate: float = setting(
        0.0,
        "Uploads (and batches) a second each namespace may make, for the "
        "host's workers together; 0: no limit.",
        server_only=True,
    )
    token_write_rate: float = setting(
        0.0,
        "Writes a second each write token may make (uploads, process, files, "
        "batches, deletes), for the host's workers together; 0: no limit.",
        server_only=True,
    )
    rate_burst: float = setting(
        5.0,
        "Seconds of a rate that may be used at once: each limit's bucket "
        "holds that many seconds of requests (at least one).",
        server_only=True,
    )
    secret: str = setting(
        "",
        "Serve only URLs signed with one of these secrets (HMAC-SHA256, see "
        "docs/security.md), comma-separated (or one per line of "
        "IMAGESERVER_SECRET_FILE): the first signs, any verifies; empty: no "
        "signatures.",
        repr=False,
        server_only=True,
        secret=True,
    )
    write_tokens: str = setting(
        "",
        "File of the tokens that may write (upload, process, store files, "
        "batches, delete) and search /similar, with Authorization: Bearer; "
        "one per line, or "
        "sha256:<hex>; read again when it changes and on SIGHUP. Empty: writes "
        "are open (or signed, with --secret).",
        server_only=True,
        secret=True,
    )
    open_similar: bool = setting(
        False,
        "Serve GET /{namespace}/similar to whoever may read, without "
        "--write_tokens or --secret (it lists a namespace's images: see "
        "docs/security.md). Without this, it is served only under one of "
        "them (then it needs a token, or a signed URL).",
        server_only=True,
    )
    webhook: tuple[str, ...] = setting(
        (),
        "URLs (comma-separated) told of every image stored, variant first "
        "generated, name deleted and image purged, by a signed JSON POST.",
        server_only=True,
    )
    webhook_secret: str = setting(
        "",
        "Key of the X-Imageserver-Signature (HMAC-SHA256 of the body) on "
        "webhook events; needed with --webhook.",
        repr=False,
        server_only=True,
        secret=True,
    )
    webhook_queue: int = setting(
        10000,
        "Webhook events held for delivery at once; more are dropped and counted.",
        server_only=True,
    )
    webhook_retry_seconds: float = setting(
        3600.0,
        "Seconds an event is retried (backoff from 1 s to 5 minutes) while its "
        "receiver fails, before it is dropped and counted.",
        server_only=True,
    )
    purge_check_interval: float = setting(
        5.0,
        "Seconds between checks for purges made by other processes (workers, "
        "other instances on the bucket), whose copies this one then forgets; "
        "0: never (one process alone).",
        server_only=True,
    )
    watermarks: tuple[str, ...] = setting(
        (),
        "Watermarks variants may lay over the output by name (wmNAME): "
        "NAME=FOLDER pairs, the folder of an uploaded original, e.g. "
        "'logo=p/6e0/072/682/e66287b662827da75b244a3' (docs/api.md).",
    )
    presets: tuple[str, ...] = setting(
        (),
        "Named variants: name=variant for every namespace, namespace:name="
        "variant for one, e.g. 'thumb=x300-smart-q70,avatars:thumb=x64-smart'; "
        "served as thumb.webp, thumb.auto, ...",
        server_only=True,
    )
    presets_only: bool = setting(
        False,
        "Serve and generate only the --presets and the --outputs.",
        server_only=True,
    )
    preset_max_age: tuple[str, ...] = setting(
        (),
        "Seconds browsers and CDNs may keep a preset's answers, for presets "
        "that differ from --cache_control_presets: name=seconds or "
        "namespace:name=seconds pairs, e.g. 'thumb=600,avatars:thumb=60'.",
        server_only=True,
    )
    cache_control_variants: str = setting(
        IMMUTABLE,
        "Cache-Control of variants by their canonical names and originals "
        "(their URLs are content-addressed: never other bytes).",
        server_only=True,
    )
    cache_control_files: str = setting(
        REVALIDATE,
        "Cache-Control of client files and info.json (they can be replaced "
        "under their name: info.json gains the faces once they are found).",
        server_only=True,
    )
    cache_control_presets: str = setting(
        PRESET_LIFETIME,
        "Cache-Control of presets, .auto names and watermarks by their name "
        "(what they stand for may change); see --preset_max_age.",
        server_only=True,
    )
    origin_stale_while_revalidate: float = setting(
        0.0,
        "Seconds after --origin_ttl that a cache in front may still serve an "
        "origin path's or thumbor URL's answer while it asks again "
        "(stale-while-revalidate); 0: none.",
        server_only=True,
    )
    serve_originals: bool = setting(
        True,
        "Serve each image's original, byte for byte with its metadata (EXIF "
        "with GPS, XMP, ICC, comments; docs/security.md), as .../original; "
        "off: .../original is a 404 and only variants, which carry none, are "
        "served.",
        server_only=True,
    )
    batch_concurrency: int = setting(
        1, "Batch items processed at once, across all batch jobs.", server_only=True
    )
    max_pending: int = setting(
        64,
        "Processing jobs allowed to wait for a thread; more get 503.",
        server_only=True,
    )
    processing_timeout: float = setting(
        60.0,
        "Seconds a request waits for its processing job before a 503; the job "
        "goes on and stores what it makes.",
    )
    idle_timeout: float = setting(
        60.0,
        "Seconds a client connection may stay silent before it is closed.",
        server_only=True,
    )
    request_head_timeout: float = setting(
        10.0,
        "Seconds a request line and its headers may take to arrive, from their "
        "first byte; slower is a 408 and the connection is closed.",
        server_only=True,
    )
    max_connections: int = setting(
        1000,
        "Client connections open at once on the main port, per worker process "
        "(with --workers N a host holds N times as many); more get a 503 and "
        "are closed.",
        server_only=True,
    )
    max_receiving_bytes: int = setting(
        256 * 1024 * 1024,
        "Bytes of request bodies held in memory at once, across connections, "
        "per worker process (with --workers N a host holds N times as much); "
        "a body that would pass it gets a 503.",
        server_only=True,
    )
    listen_backlog: int = setting(
        1024,
        "Connections the kernel queues before they are accepted, for a numeric "
        "--port or --admin_port (an endpoint takes backlog=N).",
        server_only=True,
    )
    http_timeout: float = setting(
        5.0,
        "Seconds allowed to download a source URL or an origin's object, body "
        "included.",
    )
    scheduler: str = setting(
        "",
        "Dask scheduler that runs batches and imageserver process's items, "
        "e.g. tcp://10.0.0.5:8786, or local:N for N worker processes here; "
        "empty: this process alone (docs/batch.md).",
    )
    shard_size: int = setting(
        500,
        "Most items in each task sent to the --scheduler (retried and, if a "
        "worker dies, redone as a whole).",
    )
    shard_retries: int = setting(
        2, "Times a shard that failed is tried again on the --scheduler."
    )
    max_file_age: int = setting(
        30,
        "Minutes a file stays in the local cache when a remote store is used.",
        server_only=True,
    )

    def __post_init__(self) -> None:
        if self.workers == 0:
            object.__setattr__(self, "workers", _cpu_count())
        if self.processor_concurrency == 0:
            object.__setattr__(
                self, "processor_concurrency", _threads(_cpu_count(), self.workers)
            )
        if self.uploader not in ("", "s3", "aws", "noop"):
            raise ValueError("--uploader must be s3 or noop")
        if self.remote == "s3" and not self.aws_bucket:
            raise ValueError("--uploader s3 needs --aws_bucket")
        if self.s3_acl and self.s3_acl not in CANNED_ACLS:
            raise ValueError(f"--s3_acl must be one of {', '.join(CANNED_ACLS)}")
        if self.workers > 1 and not 1 <= self.debug_worker <= self.workers:
            raise ValueError(f"--debug_worker must be 1 to {self.workers}")
        if self.log_format not in ("text", "json"):
            raise ValueError("--log_format must be text or json")
        if not 0 < self.statsd_port < 65536:
            raise ValueError("--statsd_port must be a port number")
        if self.profile and self.admin_endpoint is None:
            raise ValueError("--profile needs the admin port")
        for name, endpoint in (
            ("port", self.endpoint),
            ("admin_port", self.admin_endpoint),
            ("manhole", self.manhole_endpoint),
        ):
            if endpoint is not None:
                try:
                    endpoints.bindings(endpoint)
                except ValueError as e:
                    raise ValueError(f"--{name}: {e}") from None
        if self.manhole_endpoint is not None and not (
            self.manhole_keys or self.manhole_passwords
        ):
            raise ValueError("--manhole needs --manhole_keys or --manhole_passwords")
        # What runs code or shows the process's insides stays on this host.
        endpoints.require_loopback(
            "--manhole",
            self.manhole_endpoint,
            self.manhole_allow_remote,
            "--manhole_allow_remote",
        )
        if self.profile:
            endpoints.require_loopback(
                "with --profile, --admin_port",
                self.admin_endpoint,
                self.profile_allow_remote,
                "--profile_allow_remote",
            )
        try:
            CorsPolicy(self.cors_origins)
        except ValueError as e:
            raise ValueError(f"--cors_origins: {e}") from None
        if self.otlp_endpoint and not _http_url(self.otlp_endpoint):
            raise ValueError(
                f"--otlp_endpoint: {self.otlp_endpoint!r} is not an http(s) URL "
                "with a host and a valid port"
            )
        if self.namespace_quota_bytes < 0:
            raise ValueError(
                "--namespace_quota_bytes must not be negative (0: no quota)"
            )
        if not self.quota_interval > 0:
            raise ValueError("--quota_interval must be above 0 seconds")
        if not 0 <= self.otlp_sample_ratio <= 1:
            raise ValueError("--otlp_sample_ratio must be between 0 and 1")
        if not self.otlp_service_name.strip():
            raise ValueError(
                "--otlp_service_name must not be empty: it names this service "
                "in the traces"
            )
        if self.webhook and not self.webhook_secret:
            raise ValueError("--webhook needs --webhook_secret")
        for url in self.webhook:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--webhook: {url!r} is not an http(s) URL")
        if self.webhook_queue < 1 or self.webhook_retry_seconds < 0:
            raise ValueError(
                "--webhook_queue must be at least 1, --webhook_retry_seconds "
                "not negative"
            )
        if self.shard_retries < 0:
            raise ValueError("--shard_retries must not be negative")
        if self.scheduler and not (
            self.scheduler.startswith(("tcp://", "tls://", "ucx://", "ws://", "wss://"))
            or _local_workers(self.scheduler) is not None
        ):
            raise ValueError(
                "--scheduler must be a scheduler address (tcp://host:8786) or local:N"
            )
        if (
            self.scheduler
            and self.local_workers is None
            and self.remote is None
            and not os.path.isabs(self.local_base_path)
        ):
            raise ValueError(
                f"--scheduler {self.scheduler} with the relative --local_base_path "
                f"{self.local_base_path}: each Dask worker would store under its "
                "own working directory; give --aws_bucket, or an absolute path "
                "that every worker mounts at the same place"
            )
        if self.purge_check_interval < 0:
            raise ValueError("--purge_check_interval must not be negative")
        if self.presets_only and not (self.outputs or self.presets):
            raise ValueError("--presets_only needs --presets or --outputs")
        for name in ("processing_timeout", "idle_timeout", "request_head_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive")
        if self.max_pending < 0:
            raise ValueError("--max_pending must not be negative")
        if self.max_redirects < 0:
            raise ValueError("--max_redirects must not be negative")
        for network in self.allow_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"--allow_networks: {network!r} is not a network"
                ) from None
        if self.shutdown_timeout < 0:
            raise ValueError("--shutdown_timeout must not be negative")
        self.watermark_images  # noqa: B018 (a malformed one raises here)
        for namespace in self.origin_specs:
            try:
                check_namespace_option(namespace)
            except ValueError as e:
                raise ValueError(f"--origin {namespace}=...: {e}") from None
        if self.origin_ttl < 0 or self.origin_missing_ttl < 0:
            raise ValueError(
                "--origin_ttl and --origin_missing_ttl must not be negative "
                "(0: ask the origin again on every request, in the background)"
            )
        for name in ("rasterise_seconds", "rasterise_memory", "max_pdf_pages",
                     "max_video_seconds", "max_video_decoded_frames",
                     "video_preview_frames", "max_svg_elements",
                     "max_svg_depth"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive")
        if self.max_svg_filters < 0:
            raise ValueError("--max_svg_filters must not be negative (0: none)")
        if self.video_preview_frames > MOST_PREVIEW_FRAMES:
            raise ValueError(f"--video_preview_frames is at most {MOST_PREVIEW_FRAMES}")
        if not self.video_codecs or not set(self.video_codecs) <= set(VIDEO_CODECS):
            raise ValueError(
                f"--video_codecs names codecs among {', '.join(VIDEO_CODECS)}"
            )
        if self.rasterise_memory < MIN_RASTERISE_MEMORY:
            raise ValueError(
                f"--rasterise_memory must be at least {MIN_RASTERISE_MEMORY} "
                "(512 MiB): the rasteriser's libraries take about half of it"
            )
        if self.memory_cache_bytes < 0:
            raise ValueError("--memory_cache_bytes must not be negative")
        if self.max_source_pixels > DECODER_MAX_PIXELS:
            raise ValueError(
                f"--max_source_pixels can be at most {DECODER_MAX_PIXELS}, "
                "the most Pillow decodes"
            )
        if self.max_receiving_bytes < self.max_source_bytes:
            raise ValueError(
                "--max_receiving_bytes must hold at least one body of "
                "--max_source_bytes"
            )
        if self.max_pixels_per_byte < 0:
            raise ValueError("--max_pixels_per_byte must not be negative")
        for name in (
            "processor_concurrency",
            "io_concurrency",
            "maximum_width",
            "max_source_bytes",
            "max_source_pixels",
            "max_file_age",
            "uploader_concurrency",
            "batch_concurrency",
            "max_connections",
            "listen_backlog",
            "max_animation_frames",
            "workers",
            "shard_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        if not _DEFAULT_QUALITY.fullmatch(self.default_quality) or (
            ascii_digits(self.default_quality, 3) and int(self.default_quality) > 100
        ):
            raise ValueError(
                "--default_quality must be between 1 and 100, or 0 (each "
                "format's own), or auto:LEVEL with LEVEL one of "
                f"{', '.join(QUALITY_LEVELS)}"
            )
        if self.http_timeout <= 0:
            raise ValueError("--http_timeout must be positive")
        # svg is an SVG original's own markup: no answer for another original.
        drawn = [f for f in OUTPUT_FORMATS if not formats.output(f).markup]
        if set(self.auto_formats) - set(drawn):
            raise ValueError(f"--auto_formats must be some of {','.join(drawn)}")
        unknown = set(self.extensions) - set(OUTPUT_FORMATS)
        if unknown or not self.extensions:
            raise ValueError(f"--extensions must be some of {','.join(OUTPUT_FORMATS)}")
        try:
            Presets.from_options([], self.outputs, False, self.rules)
        except ValueError as e:
            raise ValueError(f"--outputs: {e}") from None
        try:
            presets = Presets.from_options(self.presets, [], False, self.rules)
        except ValueError as e:
            raise ValueError(f"--presets: {e}") from None
        try:
            presets.lifetimes(self.preset_max_age)
        except ValueError as e:
            raise ValueError(f"--preset_max_age: {e}") from None
        for name in ("variants", "files", "presets"):
            value = getattr(self, f"cache_control_{name}")
            if not _CACHE_CONTROL.fullmatch(value):
                raise ValueError(
                    f"--cache_control_{name}: {value[:100]!r} is not a "
                    "Cache-Control value (directives such as public, "
                    "max-age=600, separated by commas)"
                )
            for directive, seconds in _SECONDS_DIRECTIVE.findall(value):
                if not ascii_digits(seconds):
                    raise ValueError(
                        f"--cache_control_{name}: {directive}={seconds[:20]} is "
                        "not a number of seconds (0 or more, in ASCII digits)"
                    )
        for name in ("namespace_render_rate", "namespace_upload_rate",
                     "token_write_rate"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must not be negative")
        if self.rate_burst <= 0:
            raise ValueError("--rate_burst must be above 0")
        if self.origin_stale_while_revalidate < 0:
            raise ValueError("--origin_stale_while_revalidate must not be negative")
        if self.thumbor:
            self._check_thumbor()

    def _check_thumbor(self) -> None:
        specs = self.origin_specs
        if self.thumbor_loader and self.thumbor_loader not in specs:
            raise ValueError(
                f"--thumbor_loader {self.thumbor_loader!r} is not one of the "
                "--origin namespaces: give it as --origin NAME=URL too"
            )
        if not self.thumbor_loader and not any(
            spec.scheme in ("http", "https") for spec in specs.values()
        ):
            raise ValueError(
                "--thumbor needs where images come from: --thumbor_loader NAME "
                "of an --origin, or web origins (--origin NAME=https://...)"
            )
        if not self.thumbor_security_keys and not self.thumbor_allow_unsafe:
            raise ValueError(
                "--thumbor needs --thumbor_security_key (signed URLs) or "
                "--thumbor_allow_unsafe (/unsafe/ URLs)"
            )
        if not 1 <= self.thumbor_quality <= 100:
            raise ValueError("--thumbor_quality must be 1 to 100")

    @property
    def thumbor_security_keys(self) -> tuple[bytes, ...]:
        """thumbor URLs' signing keys: any verifies."""
        return tuple(
            key.strip().encode()
            for key in self.thumbor_security_key.split(",")
            if key.strip()
        )

    @property
    def remote(self) -> str | None:
        """The remote store in use, or None for the local disk alone."""
        if self.uploader in ("s3", "aws") or (not self.uploader and self.aws_bucket):
            return "s3"
        return None

    @property
    def local_workers(self) -> int | None:
        """With ``--scheduler local:N``, N: the workers to start here."""
        return _local_workers(self.scheduler)

    @property
    def serves_similar(self) -> bool:
        """Whether GET /{namespace}/similar is served: only to whom may
        know a namespace's images, or where the operator says anyone may."""
        return bool(self.write_tokens or self.secret or self.open_similar)

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """The URL-signing secrets, the one that signs first."""
        return secrets_of(self.secret)

    @property
    def endpoint(self) -> str:
        """The main port as a Twisted endpoint description."""
        return self._endpoint(self.port)

    @property
    def manhole_endpoint(self) -> str | None:
        if not self.manhole:
            return None
        if ascii_digits(self.manhole):
            return f"tcp:{self.manhole}:interface=127.0.0.1"
        return self.manhole

    @property
    def admin_endpoint(self) -> str | None:
        if self.admin_port.lower() == "none":
            return None
        return self._endpoint(self.admin_port)

    def _endpoint(self, port: str) -> str:
        if ascii_digits(port):
            interface = self.listen.replace(":", chr(92) + ":")
            return f"tcp:{port}:interface={interface}:backlog={self.listen_backlog}"
        return port

    @property
    def source_policy(self) -> SourcePolicy:
        return SourcePolicy(
            allow_private=self.allow_private_sources,
            allowlist=self.source_allowlist,
            allowed_networks=self.allow_networks,
        )

    @property
    def rules(self) -> VariantRules:
        return VariantRules(
            frozenset(self.extensions),
            int(self.default_quality) if ascii_digits(self.default_quality, 3) else 0,
            self.maximum_width,
            auto_formats=self.auto_formats,
            watermarks=tuple(
                (name, image.hash) for name, image in self.watermark_images.items()
            ),
            default_level=self.default_quality.removeprefix("auto:")
            if self.default_quality.startswith("auto:")
            else "",
        )

    @property
    def watermark_images(self) -> dict[str, ImageId]:
        """Each watermark's original (ValueError for a malformed entry)."""
        return parse_watermarks(self.watermarks)

    @property
    def decode_limits(self) -> Limits:
        return Limits(
            pixels=self.max_source_pixels,
            pixels_per_byte=self.max_pixels_per_byte,
            side=self.maximum_width,
            frames=self.max_animation_frames,
            documents=DocumentLimits(
                seconds=self.rasterise_seconds,
                memory=self.rasterise_memory,
                pages=self.max_pdf_pages,
                video_seconds=self.max_video_seconds,
                decoded=self.max_video_decoded_frames,
                codecs=self.video_codecs,
                preview_frames=self.video_preview_frames,
                svg=SvgLimits(
                    elements=self.max_svg_elements,
                    depth=self.max_svg_depth,
                    filters=self.max_svg_filters,
                    pixels=self.max_source_pixels,
                ),
            ),
        )

    @property
    def rates(self) -> Rates:
        """The rate limits (falsy: none)."""
        return Rates(
            namespace_renders=self.namespace_render_rate,
            namespace_uploads=self.namespace_upload_rate,
            token_writes=self.token_write_rate,
            burst_seconds=self.rate_burst,
        )

    @property
    def catalogue(self) -> Presets:
        """The presets, the outputs made at upload, and --presets_only."""
        presets = Presets.from_options(
            self.presets, self.outputs, self.presets_only, self.rules
        )
        return presets.with_lifetimes(self.preset_max_age)

    @property
    def origin_specs(self) -> dict[str, OriginSpec]:
        """Each origin namespace's origin (ValueError for a malformed one)."""
        return parse_origins(self.origin)

    @property
    def render_policy(self) -> RenderPolicy:
        """What the use cases may make and serve, and what it may cost."""
        return RenderPolicy(
            rules=self.rules,
            limits=self.decode_limits,
            presets=self.catalogue,
            serve_originals=self.serve_originals,
            processing_timeout=self.processing_timeout,
            origins=frozenset(self.origin_specs),
            watermarks={image.hash: image for image in self.watermark_images.values()},
        )


def fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Config)


_INT = re.compile(r"-?[0-9]{1,18}")
#: --default_quality: 0 to 100 in ASCII digits, or auto: and a level.
_DEFAULT_QUALITY = re.compile(
    rf"0|[1-9][0-9]{{0,2}}|auto:(?:{'|'.join(QUALITY_LEVELS)})"
)
#: A Cache-Control value (RFC 9111 section 5.2): directives, a token and
#: maybe =token or ="quoted", separated by commas.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_DIRECTIVE = rf"{_TOKEN}(?:=(?:{_TOKEN}|\"[ !#-~]*\"))?"
_CACHE_CONTROL = re.compile(rf"{_DIRECTIVE}(?: *, *{_DIRECTIVE})*")
#: The directives whose argument is delta-seconds (RFC 9111 section 1.2.2,
#: RFC 5861), and that argument, quoted or not.
_SECONDS_DIRECTIVE = re.compile(
    r"(?:^|,) *((?i:max-age|s-maxage|stale-while-revalidate|stale-if-error))"
    r"=\"?([^\",]*)\"?"
)
_FLOAT = re.compile(r"-?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})")


#: How a setting that is on by default is turned off (or on) in words.
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def ignored_settings(config: Config) -> list[tuple[str, str]]:
    """Settings given a value other than their default that ``config`` never
    uses, each with what would use it: said at start-up, since otherwise a
    forgotten --enable_statsd or --manhole looks like a broken setting."""
    needs = [
        (("statsd_host", "statsd_port", "statsd_prefix"), "--enable_statsd",
         config.enable_statsd),
        (("manhole_keys", "manhole_passwords", "manhole_host_keys",
          "manhole_allow_remote"), "--manhole", bool(config.manhole)),
        (("webhook_secret", "webhook_queue", "webhook_retry_seconds"),
         "--webhook", bool(config.webhook)),
        (("shard_size", "shard_retries"), "--scheduler", bool(config.scheduler)),
        (("otlp_service_name", "otlp_sample_ratio"), "--otlp_endpoint",
         bool(config.otlp_endpoint)),
        (("quota_interval",), "--namespace_quota_bytes",
         bool(config.namespace_quota_bytes)),
        (("token_write_rate",), "--write_tokens", bool(config.write_tokens)),
        (("debug_worker",), "--workers above 1", config.workers > 1),
        (("profile_allow_remote",), "--profile", config.profile),
        (("aws_region", "aws_access_key_id", "aws_secret_key",
          "s3_endpoint_url"),
         "a remote store (--aws_bucket, without --uploader noop) or a bucket "
         "origin without a profile of its own (--origin NAME=s3://...)",
         config.remote is not None or any(
             spec.uses_storage_settings for spec in config.origin_specs.values())),
        (("aws_bucket", "s3_acl", "remote_base_path", "remote_base_url",
          "uploader_concurrency", "max_file_age"),
         "a remote store (--aws_bucket, without --uploader noop)",
         config.remote is not None),
        (("rate_burst",), "a rate limit (--namespace_render_rate, ...)",
         bool(config.rates)),
        (("origin_ttl", "origin_missing_ttl", "origin_stale_while_revalidate"),
         "--origin", bool(config.origin)),
        (("thumbor_security_key", "thumbor_allow_unsafe", "thumbor_loader",
          "thumbor_quality", "thumbor_auto_webp", "thumbor_auto_avif"),
         "--thumbor", config.thumbor),
    ]  # fmt: skip
    defaults = {f.name: f.default for f in fields()}
    return [
        (name, needed)
        for names, needed, used in needs
        if not used
        for name in names
        if getattr(config, name) != defaults[name]
    ]


def parse(field: dataclasses.Field[Any], text: str) -> Any:
    """Turn a command-line string into the field's type."""
    if field.type in ("bool", bool):
        word = text.strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise ValueError(f"{text!r} is not on or off")
        return word in TRUE_WORDS
    # int() and float() also read other scripts' digits, "_", "nan" and
    # "inf": a setting is written in ASCII digits, or refused (ValueError).
    if field.type in ("int", int):
        if not _INT.fullmatch(text.strip()):
            raise ValueError(f"{text!r} is not a whole number")
        return int(text)
    if field.type in ("float", float):
        if not _FLOAT.fullmatch(text.strip()):
            raise ValueError(f"{text!r} is not a number")
        return float(text)
    if field.type in ("tuple[str, ...]", tuple[str, ...]):
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return text


def is_flag(field: dataclasses.Field[Any]) -> bool:
    """A setting given by its presence alone, such as ``--enable_statsd``.

    A setting on by default is not a flag (its presence could not turn it
    off): it takes a value, ``--serve_originals off``.
    """
    return field.type in ("bool", bool) and field.default is False


def show(value: Any) -> str:
    """A default as it is written on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def options_table() -> str:
    """The table of options in docs/configuration.md (a test keeps them equal)."""
    rows = [
        "| option | default | where | meaning |",
        "|---|---|---|---|",
    ]
    for f in fields():
        default = show(f.default)
        where = "both"
        if f.metadata["server_only"]:
            where = "server"
        elif f.metadata["command_only"]:
            where = "`imageserver process`"
        rows.append(
            f"| `--{f.name}` | {f'`{default}`' if default else '(none)'} "
            f"| {where} | {f.metadata['help']} |"
        )
    return "\n".join(rows) + "\n"


def update_table(path: str) -> None:
    """Rewrite the options table in a page: ``python -m imageserver.config PAGE``."""
    with open(path) as f:
        page = f.read()
    start = page.index("| option | default |")
    end = page.index("\n\n", start) + 1
    with open(path, "w") as f:
        f.write(page[:start] + options_table() + page[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(
            "usage: python -m imageserver.config [PAGE]\n\nPrints the options "
            "table, or rewrites the one in PAGE (docs/configuration.md)."
        )
    elif len(sys.argv) > 1:
        update_table(sys.argv[1])
    else:
        print(options_table(), end="")
