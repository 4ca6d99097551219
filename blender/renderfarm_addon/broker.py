# The broker's HTTP API as the add-on uses it, with Blender's bundled Python
# only (urllib, ssl, hashlib, json). Nothing here imports bpy: every function
# runs on a background thread, never on Blender's interface thread.
import hashlib
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request

USER_AGENT = "renderfarm-blender-addon"
# Hashing and uploading read the file in pieces of this size.
BLOCK = 1 << 20


class BrokerError(Exception):
    """A failure to show the artist as it is: it says what and how to fix.
    `status` is the broker's HTTP status when it answered."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class Broker:
    """One broker: its address, the artist's token, how to trust it."""

    def __init__(self, url, token, ca_file="", timeout=30.0):
        self.url = url.strip().rstrip("/")
        self.token = token.strip()
        self.timeout = timeout
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BrokerError(
                "the broker URL %r is not an http:// or https:// address; set it in "
                "Preferences > Add-ons > Render Farm (e.g. http://farm:8080)" % url
            )
        self.context = None
        if parsed.scheme == "https":
            # The system's authorities, plus the farm's private one on top
            # (as the command line's --ca does).
            self.context = ssl.create_default_context()
            if ca_file:
                try:
                    self.context.load_verify_locations(cafile=ca_file)
                except (OSError, ssl.SSLError) as e:
                    raise BrokerError(
                        "cannot read the private CA file %s (%s); point the add-on's "
                        "preferences at the PEM certificate of your farm's authority"
                        % (ca_file, e)
                    )

    def dashboard_link(self, render_id):
        """The dashboard's page of a render (hash routes, served at /)."""
        return "%s/#/renders/%s" % (self.url, render_id)

    def request(self, method, path, body=None, headers=None, expect=(200,)):
        """Sends one request; returns (status, headers, bytes). Any status
        outside `expect` becomes a BrokerError carrying the broker's message."""
        url = self.url + path
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        # Without a token only a broker run with --auth off answers; any
        # other says 401, which tells the artist to set one.
        if self.token:
            all_headers["Authorization"] = "Bearer " + self.token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                status, answer_headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, answer_headers = e.code, e.headers
            try:
                data = e.read()
            except OSError:
                data = b""
        except urllib.error.URLError as e:
            raise BrokerError(self.unreachable(method, url, e.reason))
        except (OSError, ValueError) as e:
            raise BrokerError(self.unreachable(method, url, e))
        if status not in expect:
            raise BrokerError(self.refusal(method, url, status, data), status)
        return status, answer_headers, data

    def unreachable(self, method, url, reason):
        tried = "%s %s" % (method, url)
        if isinstance(reason, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(reason):
            return (
                "the broker at %s has a certificate this machine does not trust (%s; tried %s); "
                "set the private CA file in Preferences > Add-ons > Render Farm" % (self.url, reason, tried)
            )
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return (
                "the broker at %s did not answer within %g s (tried %s); check that it runs and "
                "is not overloaded, or raise the timeout in the add-on's preferences"
                % (self.url, self.timeout, tried)
            )
        return (
            "cannot reach the broker at %s (%s; tried %s); check the broker URL in "
            "Preferences > Add-ons > Render Farm and that the broker is running" % (self.url, reason, tried)
        )

    @staticmethod
    def refusal(method, url, status, data):
        message = ""
        try:
            message = json.loads(data.decode("utf-8")).get("message", "")
        except (ValueError, AttributeError, UnicodeDecodeError):
            pass
        if not message:
            message = data.decode("utf-8", "replace").strip()[:300] or "no reason given"
        hint = ""
        if status == 401:
            # The broker's message says how to get a token; this says where
            # the add-on keeps it.
            hint = " (check the token in Preferences > Add-ons > Render Farm)"
        elif status == 403:
            hint = " (submitting needs a token with the artist role)"
        return "the broker refused %s %s with %d: %s%s" % (method, url, status, message, hint)

    def json(self, method, path, body=None, expect=(200,)):
        _, _, data = self.request(method, path, body, expect=expect)
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise BrokerError(
                "the broker at %s answered %s %s with something that is not JSON; "
                "is the URL the broker's (not its dashboard behind a proxy)?" % (self.url, method, path)
            )

    def check(self):
        """Says whether the broker answers and takes the token, in one
        small request that any role may make, auth on or off."""
        self.json("GET", "/renders?limit=1")

    def submit(self, spec):
        """POST /renders: the render as the broker took it."""
        return self.json("POST", "/renders", spec, expect=(200, 201, 202))

    def my_renders(self, limit):
        """The caller's own renders, newest first."""
        answer = self.json("GET", "/renders?owner=me&limit=%d" % limit)
        return answer.get("items", [])

    def preview(self, render_id):
        """The newest preview of a render (JPEG bytes), or None while there
        is none (404 is the usual answer before a first frame)."""
        status, _, data = self.request(
            "GET", "/renders/%s/preview" % render_id, headers={"Accept": "image/*"}, expect=(200, 404)
        )
        return data if status == 200 and data else None

    def upload(self, path, sha256, progress=None):
        """Puts the file at `path` (its hash `sha256`) in the broker's store
        unless it holds it already, resuming an upload that stopped. Returns
        True when bytes were sent, False when the broker had the file."""
        total = os.path.getsize(path)
        for _ in range(3):
            status, headers, _ = self.request("HEAD", "/files/" + sha256, expect=(200, 404))
            if status == 200:
                return False
            try:
                offset = int(headers.get("Upload-Offset") or 0)
            except ValueError:
                offset = 0
            if not 0 <= offset <= total:
                offset = 0
            with open(path, "rb") as f:
                f.seek(offset)
                body = _Progressing(f, offset, total, progress)
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(total - offset),
                }
                if offset > 0:
                    headers["Content-Range"] = "bytes %d-%d/%d" % (offset, total - 1, total)
                try:
                    status, _, _ = self.request(
                        "PUT", "/files/" + sha256, body=body, headers=headers, expect=(200, 201, 202)
                    )
                except BrokerError as e:
                    # 409: another upload of the same file moved the broker's
                    # offset; asking again says where to go on.
                    if e.status == 409:
                        continue
                    raise
            if status != 202:
                return True
        raise BrokerError(
            "the broker at %s kept refusing the upload's offset; another upload of the "
            "same file may be running: submit again once it ends" % self.url
        )


class _Progressing:
    """A file body that says how far it has been read (http.client reads it
    in blocks)."""

    def __init__(self, f, done, total, progress):
        self.f, self.done, self.total, self.progress = f, done, total, progress

    def read(self, size=-1):
        data = self.f.read(BLOCK if size is None or size < 0 else size)
        self.done += len(data)
        if self.progress:
            self.progress(self.done, self.total)
        return data


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
