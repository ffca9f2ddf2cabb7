"""A fake Google Cloud Storage server for the GCS artifact tests (stdlib only, loopback only).

It implements exactly the part of the GCS *XML API* that the Rust `object_store` crate (0.14.x,
`object_store::gcp`) sends for the operations spotsweep's artifact proxy uses -- see
`object_store-0.14.2/src/gcp/client.rs`. Object paths are sent with every byte but ASCII
alphanumerics percent-encoded (`/` becomes `%2F`), the bucket likewise:

  put (single request)       PUT    /BUCKET/OBJECT                        Content-Length, Content-Type
                                    -> 200, ETag (+ x-goog-generation)
  put_multipart:
    initiate                 POST   /BUCKET/OBJECT?uploads=               Content-Length: 0, Content-Type
                                    -> 200 <InitiateMultipartUploadResult><UploadId>
    upload part              PUT    /BUCKET/OBJECT?partNumber=N&uploadId=ID   (N = 1, 2, ...)
                                    -> 200, ETag (required: object_store unwraps it)
    complete                 POST   /BUCKET/OBJECT?uploadId=ID
                                    body <CompleteMultipartUpload><Part><ETag/><PartNumber/></Part>...
                                    -> 200 <CompleteMultipartUploadResult><ETag> (+ x-goog-generation)
    abort / empty upload     DELETE /BUCKET/OBJECT?uploadId=ID           -> 204
                             (with no parts, object_store aborts and then does a single empty PUT)
  get / head                 GET|HEAD /BUCKET/OBJECT[?generation=G]       [Range: bytes=...]
                                    -> 200|206 with Content-Length, ETag, Last-Modified (RFC 2822;
                                       both required by object_store), x-goog-generation
  delete                     DELETE /BUCKET/OBJECT                        -> 204, 404 NoSuchKey
  list / list_with_delimiter GET    /BUCKET?list-type=2[&delimiter=/][&prefix=P/]
                                        [&continuation-token=T][&start-after=K][&max-keys=N]
                                    -> 200 <ListBucketResult> (S3 ListObjectsV2 shape: Contents
                                       {Key, Size, LastModified (RFC 3339), ETag},
                                       CommonPrefixes {Prefix}, NextContinuationToken)

Note that object_store does NOT use the GCS JSON API nor resumable uploads for any of this.

Everything else is refused with a 4xx (never a 5xx: object_store retries 5xx for minutes).
Every request must carry `Authorization: Bearer <token>` (object_store sends the token given by
GOOGLE_BEARER_TOKEN). Objects live in memory. Every request is recorded in `server.requests`
(and printed to stderr when FAKE_GCS_VERBOSE=1) for debugging and assertions.

Standalone: `python fake_gcs.py --port 4443 --bucket test-bucket --token t` (prints its URL).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.server
import itertools
import os
import secrets
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from xml.sax.saxutils import escape

MIN_PART_SIZE = 5 * 1024 * 1024  # GCS XML multipart: every part but the last >= 5 MiB
MAX_PART_NUMBER = 10000
MAX_OBJECT_NAME_BYTES = 1024
DEFAULT_MAX_KEYS = 1000
XMLNS = "http://doc.s3.amazonaws.com/2006-03-01"

_generation = itertools.count(int(time.time() * 1_000_000))


@dataclass
class StoredObject:
    data: bytes
    etag: str  # with the double quotes, as sent in the ETag header
    generation: int
    content_type: str
    mtime: float
    md5: bytes
    components: int = 1  # number of parts it was composed from


@dataclass
class MultipartUpload:
    bucket: str
    name: str
    content_type: str
    parts: dict = field(default_factory=dict)  # part number -> (etag, bytes)


@dataclass
class LoggedRequest:
    method: str
    raw_path: str
    bucket: str | None
    object: str | None
    query: dict
    headers: dict
    body_len: int
    status: int = 0
    error: str | None = None
    response_headers: dict = field(default_factory=dict)

    def short(self) -> str:
        extra = f" err={self.error}" if self.error else ""
        obj = f" (object {self.object!r})" if self.object is not None else ""
        return f"{self.method} {self.raw_path}{obj} body={self.body_len} -> {self.status}{extra}"


class GcsError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _rfc3339(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _quote_etag(hexdigest: str) -> str:
    return f'"{hexdigest}"'


def _strip_quotes(etag: str) -> str:
    etag = etag.strip()
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        return etag[1:-1]
    return etag


class FakeGcsState:
    """The buckets, objects and pending multipart uploads; thread-safe."""

    def __init__(self, buckets, token: str | None):
        self.lock = threading.Lock()
        self.buckets: dict[str, dict[str, StoredObject]] = {b: {} for b in buckets}
        self.uploads: dict[str, MultipartUpload] = {}
        self.token = token
        self.requests: list[LoggedRequest] = []
        # Page size used when the client sends no max-keys (GCS: 1000). Lower it to exercise
        # continuation tokens.
        self.default_max_keys = DEFAULT_MAX_KEYS
        # Fault injection: (method, query key or None, status, code) answered once, in order.
        self.faults: list[tuple[str, str | None, int, str]] = []


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as reqwest/hyper expect
    server_version = "FakeGCS/1.0"
    state: FakeGcsState  # set on the subclass made by FakeGcsServer

    # ------------------------------------------------------------------ plumbing
    def log_message(self, fmt, *args):  # the request log replaces the default stderr lines
        pass

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "").lower()
        if te:
            if te != "chunked":
                raise GcsError(400, "InvalidArgument", f"unsupported Transfer-Encoding {te!r}")
            chunks = []
            while True:
                line = self.rfile.readline(1024).strip()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
            return b"".join(chunks)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise GcsError(400, "InvalidArgument", f"bad Content-Length {cl!r}") from None
        data = self.rfile.read(n)
        if len(data) != n:
            self._logged.body_len = len(data)
            raise GcsError(400, "IncompleteBody", f"got {len(data)} of {n} bytes")
        return data

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head=False):
        self.send_response(status)
        hdrs = {"Date": email.utils.formatdate(usegmt=True)}
        hdrs.update(headers or {})
        if status not in (204, 304) and "Content-Length" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        if status == 204:
            hdrs.pop("Content-Length", None)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head and status not in (204, 304):
            self.wfile.write(body)
        self._logged.status = status
        self._logged.response_headers = hdrs

    def _send_xml(self, status: int, xml: str, headers: dict | None = None):
        h = {"Content-Type": "application/xml; charset=UTF-8"}
        h.update(headers or {})
        self._send(status, ("<?xml version='1.0' encoding='UTF-8'?>" + xml).encode(), h)

    def _send_error(self, err: GcsError, head=False):
        self._logged.error = f"{err.code}: {err.message}"
        body = (
            "<?xml version='1.0' encoding='UTF-8'?>"
            f"<Error><Code>{escape(err.code)}</Code><Message>{escape(err.message)}</Message></Error>"
        ).encode()
        self._send(err.status, body, {"Content-Type": "application/xml; charset=UTF-8"}, head=head)

    def _dispatch(self):
        st = self.state
        raw = self.path
        split = urllib.parse.urlsplit(raw)
        self._logged = LoggedRequest(
            method=self.command,
            raw_path=raw,
            bucket=None,
            object=None,
            query={},
            headers={k: v for k, v in self.headers.items()},
            body_len=0,
        )
        with st.lock:
            st.requests.append(self._logged)
        head = self.command == "HEAD"
        body_read = False
        try:
            try:
                query = dict(
                    urllib.parse.parse_qsl(
                        split.query, keep_blank_values=True, strict_parsing=bool(split.query)
                    )
                )
            except ValueError:
                raise GcsError(400, "InvalidArgument", f"bad query string {split.query!r}") from None
            self._logged.query = query
            bucket, name = self._parse_target(split.path)
            self._logged.bucket, self._logged.object = bucket, name
            body = self._read_body()
            body_read = True
            self._logged.body_len = len(body)
            self._check_auth()
            self._maybe_fault(query)
            if bucket not in st.buckets:
                raise GcsError(404, "NoSuchBucket", f"The specified bucket {bucket!r} does not exist.")
            self._route(bucket, name, query, body)
        except GcsError as e:
            if not body_read:  # the rest of the request is still on the wire (or gone)
                self.close_connection = True
            try:
                self._send_error(e, head=head)
            except OSError:  # the client went away (e.g. it cancelled an in-flight part)
                self._logged.error = f"{e.code}: {e.message} (client gone)"
        except OSError as e:  # the client closed the connection mid-request
            self._logged.error = f"connection lost: {e!r}"
            self.close_connection = True
        except Exception as e:  # a bug in the fake: answer 4xx so object_store does not retry
            self._logged.error = f"FakeGcsBug: {e!r}"
            self.close_connection = True
            if self._logged.status == 0:  # nothing sent yet
                self._send_error(GcsError(400, "FakeGcsBug", repr(e)), head=head)
        finally:
            if os.environ.get("FAKE_GCS_VERBOSE") == "1":
                print("fake-gcs:", self._logged.short(), file=sys.stderr, flush=True)

    def _parse_target(self, path: str):
        if not path.startswith("/") or path == "/":
            raise GcsError(400, "InvalidURI", f"no bucket in path {path!r}")
        rest = path[1:]
        bucket_enc, sep, name_enc = rest.partition("/")
        try:
            bucket = urllib.parse.unquote_to_bytes(bucket_enc).decode("utf-8", "strict")
            name = (
                urllib.parse.unquote_to_bytes(name_enc).decode("utf-8", "strict") if sep else None
            )
        except UnicodeDecodeError:
            raise GcsError(400, "InvalidURI", "object name is not valid UTF-8") from None
        if not bucket:
            raise GcsError(400, "InvalidURI", "empty bucket name")
        if name is not None:
            if name == "":
                # `/bucket/` -- treat as a bucket request, as GCS does, only for GET
                name = None
            else:
                if len(name.encode()) > MAX_OBJECT_NAME_BYTES:
                    raise GcsError(400, "InvalidArgument", "object name longer than 1024 bytes")
                if "\r" in name or "\n" in name:
                    raise GcsError(400, "InvalidArgument", "object name contains CR or LF")
                if name in (".", "..") or name.startswith(".well-known/acme-challenge/"):
                    raise GcsError(400, "InvalidArgument", f"object name {name!r} is not allowed")
        return bucket, name

    def _maybe_fault(self, query):
        st = self.state
        with st.lock:
            for i, (method, key, status, code) in enumerate(st.faults):
                if method == self.command and (key is None or key in query):
                    del st.faults[i]
                    break
            else:
                return
        raise GcsError(status, code, "injected fault")

    def _check_auth(self):
        token = self.state.token
        if token is None:
            return
        got = self.headers.get("Authorization")
        if got is None:
            raise GcsError(401, "AuthenticationRequired", "Authentication required.")
        if got != f"Bearer {token}":
            raise GcsError(401, "InvalidAuthentication", "Invalid bearer token.")

    # ------------------------------------------------------------------ routing
    def _route(self, bucket, name, query, body):
        m = self.command
        if name is None:
            if m == "GET":
                return self._list(bucket, query)
            raise GcsError(405, "MethodNotAllowed", f"{m} on a bucket is not supported by the fake")
        keys = set(query)
        if m in ("GET", "HEAD"):
            if keys - {"generation"}:
                raise GcsError(400, "InvalidArgument", f"unsupported query {sorted(keys)}")
            return self._get(bucket, name, query, head=(m == "HEAD"))
        if m == "PUT":
            if "x-goog-copy-source" in {k.lower() for k in self.headers}:
                raise GcsError(400, "NotImplemented", "copy is not supported by the fake")
            if not keys:
                return self._put(bucket, name, body)
            if keys == {"partNumber", "uploadId"}:
                return self._put_part(bucket, name, query, body)
            raise GcsError(400, "InvalidArgument", f"unsupported query {sorted(keys)}")
        if m == "POST":
            if keys == {"uploads"}:
                if query["uploads"] != "":
                    raise GcsError(400, "InvalidArgument", "uploads takes no value")
                if body:
                    raise GcsError(400, "InvalidArgument", "initiate must have an empty body")
                return self._initiate(bucket, name)
            if keys == {"uploadId"}:
                return self._complete(bucket, name, query["uploadId"], body)
            raise GcsError(400, "InvalidArgument", f"unsupported query {sorted(keys)}")
        if m == "DELETE":
            if not keys:
                return self._delete(bucket, name)
            if keys == {"uploadId"}:
                return self._abort(bucket, name, query["uploadId"])
            raise GcsError(400, "InvalidArgument", f"unsupported query {sorted(keys)}")
        raise GcsError(405, "MethodNotAllowed", f"method {m} is not supported")

    def _require_content_length(self):
        if self.headers.get("Content-Length") is None and not self.headers.get("Transfer-Encoding"):
            raise GcsError(411, "MissingContentLength", "Content-Length is required")

    def _content_type(self) -> str:
        return self.headers.get("Content-Type") or "application/octet-stream"

    def _check_preconditions(self, existing: StoredObject | None):
        want = self.headers.get("x-goog-if-generation-match")
        if want is None:
            return
        current = existing.generation if existing else 0
        if str(current) != want.strip():
            raise GcsError(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")

    def _store(self, bucket, name, data: bytes, content_type: str, md5: bytes, etag: str, components=1):
        st = self.state
        with st.lock:
            self._check_preconditions(st.buckets[bucket].get(name))
            obj = StoredObject(
                data=data,
                etag=etag,
                generation=next(_generation),
                content_type=content_type,
                mtime=time.time(),
                md5=md5,
                components=components,
            )
            st.buckets[bucket][name] = obj
        return obj

    @staticmethod
    def _hash_headers(obj: StoredObject) -> dict:
        h = {}
        if obj.components == 1:
            h["x-goog-hash"] = "md5=" + base64.b64encode(obj.md5).decode()
        return h

    # ------------------------------------------------------------------ operations
    def _put(self, bucket, name, body):
        self._require_content_length()
        md5 = hashlib.md5(body).digest()
        obj = self._store(bucket, name, body, self._content_type(), md5, _quote_etag(md5.hex()))
        self._send(
            200,
            b"",
            {
                "ETag": obj.etag,
                "x-goog-generation": str(obj.generation),
                "x-goog-metageneration": "1",
                "x-goog-stored-content-length": str(len(body)),
                **self._hash_headers(obj),
            },
        )

    def _initiate(self, bucket, name):
        upload_id = "fake-" + secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.uploads[upload_id] = MultipartUpload(bucket, name, self._content_type())
        self._send_xml(
            200,
            f'<InitiateMultipartUploadResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}</Bucket>'
            f"<Key>{escape(name)}</Key><UploadId>{escape(upload_id)}</UploadId>"
            "</InitiateMultipartUploadResult>",
        )

    def _upload_for(self, bucket, name, upload_id) -> MultipartUpload:
        up = self.state.uploads.get(upload_id)
        if up is None or up.bucket != bucket or up.name != name:
            raise GcsError(404, "NoSuchUpload", f"The requested upload {upload_id!r} was not found.")
        return up

    def _put_part(self, bucket, name, query, body):
        self._require_content_length()
        try:
            n = int(query["partNumber"])
        except ValueError:
            raise GcsError(400, "InvalidArgument", "partNumber is not an integer") from None
        if not 1 <= n <= MAX_PART_NUMBER:
            raise GcsError(400, "InvalidArgument", f"partNumber {n} out of range 1..{MAX_PART_NUMBER}")
        etag = _quote_etag(hashlib.md5(body).hexdigest())
        with self.state.lock:
            up = self._upload_for(bucket, name, query["uploadId"])
            up.parts[n] = (etag, body)
        self._send(200, b"", {"ETag": etag})

    def _complete(self, bucket, name, upload_id, body):
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            raise GcsError(400, "MalformedXML", f"complete body is not XML: {e}") from None
        if _local(root.tag) != "CompleteMultipartUpload":
            raise GcsError(400, "MalformedXML", f"unexpected root element {root.tag!r}")
        listed = []
        for part in root:
            if _local(part.tag) != "Part":
                raise GcsError(400, "MalformedXML", f"unexpected element {part.tag!r}")
            fields = {_local(c.tag): (c.text or "") for c in part}
            if set(fields) - {"ETag", "PartNumber"} or "ETag" not in fields or "PartNumber" not in fields:
                raise GcsError(400, "MalformedXML", f"a Part needs ETag and PartNumber: {fields}")
            try:
                listed.append((int(fields["PartNumber"]), fields["ETag"]))
            except ValueError:
                raise GcsError(400, "MalformedXML", "PartNumber is not an integer") from None
        if not listed:
            raise GcsError(400, "MalformedXML", "no parts: GCS refuses an empty multipart upload")
        numbers = [n for n, _ in listed]
        if numbers != sorted(set(numbers)):
            raise GcsError(400, "InvalidPartOrder", "parts must be listed in ascending order, once each")
        with self.state.lock:
            up = self._upload_for(bucket, name, upload_id)
            chunks = []
            for i, (n, etag) in enumerate(listed):
                if n not in up.parts:
                    raise GcsError(400, "InvalidPart", f"part {n} was never uploaded")
                stored_etag, data = up.parts[n]
                if _strip_quotes(stored_etag) != _strip_quotes(etag):
                    raise GcsError(400, "InvalidPart", f"part {n}: ETag {etag!r} != {stored_etag!r}")
                if i < len(listed) - 1 and len(data) < MIN_PART_SIZE:
                    raise GcsError(
                        400, "EntityTooSmall", f"part {n} is {len(data)} bytes; all but the last need 5 MiB"
                    )
                chunks.append(data)
            del self.state.uploads[upload_id]
        data = b"".join(chunks)
        md5s = b"".join(bytes.fromhex(_strip_quotes(e)) for _, e in listed)
        etag = _quote_etag(f"{hashlib.md5(md5s).hexdigest()}-{len(listed)}")
        obj = self._store(
            bucket, name, data, up.content_type, hashlib.md5(data).digest(), etag, len(listed)
        )
        self._send_xml(
            200,
            f'<CompleteMultipartUploadResult xmlns="{XMLNS}">'
            f"<Location>http://{escape(self.headers.get('Host', ''))}/{escape(bucket)}/{escape(name)}</Location>"
            f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key>"
            f"<ETag>{escape(obj.etag)}</ETag></CompleteMultipartUploadResult>",
            {"x-goog-generation": str(obj.generation)},
        )

    def _abort(self, bucket, name, upload_id):
        with self.state.lock:
            self._upload_for(bucket, name, upload_id)
            del self.state.uploads[upload_id]
        self._send(204)

    def _delete(self, bucket, name):
        with self.state.lock:
            if name not in self.state.buckets[bucket]:
                raise GcsError(404, "NoSuchKey", "The specified key does not exist.")
            del self.state.buckets[bucket][name]
        self._send(204)

    def _get(self, bucket, name, query, head):
        for h in ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"):
            if self.headers.get(h) is not None:
                raise GcsError(400, "NotImplemented", f"{h} is not supported by the fake")
        with self.state.lock:
            obj = self.state.buckets[bucket].get(name)
        if obj is None:
            raise GcsError(404, "NoSuchKey", "The specified key does not exist.")
        if "generation" in query and query["generation"] != str(obj.generation):
            raise GcsError(404, "NoSuchKey", "The specified generation does not exist.")
        size = len(obj.data)
        headers = {
            "Content-Type": obj.content_type,
            "ETag": obj.etag,
            "Last-Modified": email.utils.formatdate(obj.mtime, usegmt=True),
            "x-goog-generation": str(obj.generation),
            "x-goog-metageneration": "1",
            "x-goog-stored-content-length": str(size),
            "x-goog-stored-content-encoding": "identity",
            "Accept-Ranges": "bytes",
            **self._hash_headers(obj),
        }
        rng = self.headers.get("Range")
        if rng is None:
            headers["Content-Length"] = str(size)
            return self._send(200, obj.data, headers, head=head)
        start, end = _parse_range(rng, size)
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        self._send(206, obj.data[start:end], headers, head=head)

    def _list(self, bucket, query):
        allowed = {"list-type", "delimiter", "prefix", "continuation-token", "max-keys", "start-after"}
        if set(query) - allowed:
            raise GcsError(400, "InvalidArgument", f"unsupported list query {sorted(set(query) - allowed)}")
        if query.get("list-type") != "2":
            raise GcsError(400, "InvalidArgument", "the fake only implements list-type=2")
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter")
        if delimiter == "":
            raise GcsError(400, "InvalidArgument", "empty delimiter")
        try:
            max_keys = int(query.get("max-keys", self.state.default_max_keys))
        except ValueError:
            raise GcsError(400, "InvalidArgument", "max-keys is not an integer") from None
        max_keys = max(1, min(max_keys, DEFAULT_MAX_KEYS))
        after = query.get("start-after", "")
        token = query.get("continuation-token")
        if token is not None:
            try:
                after = max(after, base64.urlsafe_b64decode(token.encode()).decode())
            except (ValueError, UnicodeDecodeError):
                raise GcsError(400, "InvalidArgument", "bad continuation-token") from None
        with self.state.lock:
            names = sorted(self.state.buckets[bucket])
            objects = dict(self.state.buckets[bucket])
        # S3/GCS semantics: keys in lexicographic order; with a delimiter, keys sharing
        # prefix + ... + delimiter roll up into one CommonPrefix, counted once.
        entries = []  # ("obj", name) or ("prefix", p), in order
        last_marker = None
        seen_prefixes = set()
        truncated = False
        for n in names:
            if not n.startswith(prefix) or n <= after:
                continue
            if delimiter:
                i = n.find(delimiter, len(prefix))
                if i >= 0:
                    p = n[: i + len(delimiter)]
                    if p in seen_prefixes or p <= after:
                        continue
                    if len(entries) == max_keys:
                        truncated = True
                        break
                    seen_prefixes.add(p)
                    entries.append(("prefix", p))
                    # resume after every key under this prefix
                    last_marker = p + "\U0010ffff"
                    continue
            if len(entries) == max_keys:
                truncated = True
                break
            entries.append(("obj", n))
            last_marker = n
        out = [f'<ListBucketResult xmlns="{XMLNS}"><Name>{escape(bucket)}</Name>']
        out.append(f"<Prefix>{escape(prefix)}</Prefix>")
        if delimiter:
            out.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        out.append(f"<KeyCount>{len(entries)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>")
        out.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if token is not None:
            out.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if truncated:
            nxt = base64.urlsafe_b64encode(last_marker.encode()).decode()
            out.append(f"<NextContinuationToken>{escape(nxt)}</NextContinuationToken>")
        for kind, v in entries:
            if kind == "obj":
                o = objects[v]
                out.append(
                    f"<Contents><Key>{escape(v)}</Key><Generation>{o.generation}</Generation>"
                    f"<MetaGeneration>1</MetaGeneration><LastModified>{_rfc3339(o.mtime)}</LastModified>"
                    f"<ETag>{escape(o.etag)}</ETag><Size>{len(o.data)}</Size></Contents>"
                )
            else:
                out.append(f"<CommonPrefixes><Prefix>{escape(v)}</Prefix></CommonPrefixes>")
        out.append("</ListBucketResult>")
        self._send_xml(200, "".join(out))

    # ------------------------------------------------------------------ verbs
    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _unsupported(self):
        self._dispatch_unsupported()

    def _dispatch_unsupported(self):
        self._logged = LoggedRequest(self.command, self.path, None, None, {}, dict(self.headers), 0)
        with self.state.lock:
            self.state.requests.append(self._logged)
        with_body = self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding")
        self._send_error(GcsError(405, "MethodNotAllowed", f"method {self.command} is not supported"))
        if with_body:
            self.close_connection = True

    do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _unsupported


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_range(value: str, size: int):
    v = value.strip()
    if not v.startswith("bytes=") or "," in v:
        raise GcsError(400, "InvalidArgument", f"unsupported Range {value!r}")
    a, sep, b = v[len("bytes="):].partition("-")
    if not sep:
        raise GcsError(400, "InvalidArgument", f"bad Range {value!r}")
    try:
        if a == "":
            n = int(b)
            start, end = max(0, size - n), size
        else:
            start = int(a)
            end = size if b == "" else min(int(b) + 1, size)
    except ValueError:
        raise GcsError(400, "InvalidArgument", f"bad Range {value!r}") from None
    if start >= size or start >= end:
        raise GcsError(416, "InvalidRange", "The requested range cannot be satisfied.")
    return start, end


class FakeGcsServer:
    """`with FakeGcsServer(buckets=["b"], token="t") as gcs:` -> `gcs.url`, `gcs.objects("b")`."""

    def __init__(self, buckets=("test-bucket",), token: str | None = "fake-gcs-token", host="127.0.0.1", port=0):
        self.state = FakeGcsState(buckets, token)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-gcs", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token(self):
        return self.state.token

    @property
    def requests(self) -> list[LoggedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -------------------------------------------------------------- inspection
    def objects(self, bucket="test-bucket") -> dict[str, bytes]:
        with self.state.lock:
            return {k: v.data for k, v in self.state.buckets[bucket].items()}

    def object_meta(self, bucket, name) -> StoredObject | None:
        with self.state.lock:
            return self.state.buckets[bucket].get(name)

    def pending_uploads(self) -> list[MultipartUpload]:
        with self.state.lock:
            return list(self.state.uploads.values())

    def inject_fault(self, method: str, query_key: str | None, status=403, code="AccessDenied"):
        """Answer the next `method` request (with `query_key` in its query) with an error."""
        with self.state.lock:
            self.state.faults.append((method, query_key, status, code))

    def set_page_size(self, n: int):
        self.state.default_max_keys = n

    def request_log(self, since: int = 0, last: int | None = None) -> str:
        reqs = self.requests[since:]
        if last is not None:
            reqs = reqs[-last:]
        return "\n".join(r.short() for r in reqs)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bucket", action="append", default=None)
    ap.add_argument("--token", default="fake-gcs-token", help="required bearer token ('' = none)")
    args = ap.parse_args(argv)
    os.environ.setdefault("FAKE_GCS_VERBOSE", "1")
    srv = FakeGcsServer(args.bucket or ["test-bucket"], args.token or None, args.host, args.port)
    print(f"fake GCS listening on {srv.url}", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
