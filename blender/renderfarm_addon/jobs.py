# What the add-on does away from Blender's interface thread: a submission
# (pack, hash, upload, POST /renders) and the refresh of the artist's recent
# renders with their previews. Nothing here touches bpy; the interface thread
# reads the results under each object's lock, from a timer.
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time

from .broker import BrokerError, sha256_file

# How long the packing Blender may take before the submission gives up.
PACK_TIMEOUT = 600


class SubmitJob(threading.Thread):
    """One submission. `blend_copy` is the copy saved on the interface thread
    (the artist's unsaved changes included); upload mode packs it in a
    Blender of its own and sends it through the broker, shared mode submits
    its path as it is."""

    def __init__(self, broker, spec, blend_copy, upload, blender_binary, pack_script, scratch):
        super().__init__(name="renderfarm-submit", daemon=True)
        self.broker = broker
        self.spec = spec
        self.blend_copy = blend_copy
        self.upload = upload
        self.blender_binary = blender_binary
        self.pack_script = pack_script
        # A folder of the job's own, removed when it ends (None in shared
        # mode: the copy there is what the workers will read).
        self.scratch = scratch
        self.lock = threading.Lock()
        self.stage = "saving a copy"
        self.done = False
        self.error = None
        self.render = None
        self.warnings = []

    def say(self, stage):
        with self.lock:
            self.stage = stage

    def run(self):
        try:
            spec = dict(self.spec)
            # A wrong address or token is said in a second, before minutes
            # of packing and uploading.
            self.say("checking the broker")
            self.broker.check()
            if self.upload:
                packed = self.pack()
                self.say("hashing the packed copy")
                sha256 = sha256_file(packed)

                def progress(done, total):
                    self.say("uploading %d%% of %.1f MB" % (100 * done // max(total, 1), total / 1e6))

                self.say("uploading")
                self.broker.upload(packed, sha256, progress)
                spec["blend_sha256"] = sha256
                spec.setdefault("blend_file", spec["name"] + ".blend")
            else:
                spec["blend_file"] = self.blend_copy
            self.say("submitting")
            render = self.broker.submit(spec)
            with self.lock:
                self.render = render
        except BrokerError as e:
            with self.lock:
                self.error = str(e)
        except Exception as e:  # noqa: BLE001 - whatever it is, the artist must see it
            with self.lock:
                self.error = "the submission failed unexpectedly (%s: %s); please report it" % (
                    type(e).__name__,
                    e,
                )
        finally:
            if self.scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
            with self.lock:
                self.done = True

    def pack(self):
        """Runs pack.py in a separate Blender on the copy, exactly as
        `renderfarm submit --upload` does; the packed file's path."""
        self.say("packing a self-contained copy with Blender")
        packed = os.path.join(self.scratch, "packed", os.path.basename(self.blend_copy))
        os.makedirs(os.path.dirname(packed), exist_ok=True)
        report_path = os.path.join(self.scratch, "report.json")
        env = dict(os.environ)
        # The packing Blender's session files go with the copy.
        env["TMP"] = env["TMPDIR"] = self.scratch
        try:
            done = subprocess.run(
                [
                    self.blender_binary,
                    "-b",
                    "--factory-startup",
                    self.blend_copy,
                    "--python-exit-code",
                    "1",
                    "--python",
                    self.pack_script,
                    "--",
                    packed,
                    report_path,
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                timeout=PACK_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BrokerError(
                "could not run Blender (%s) to pack the scene: %s; switch the add-on to "
                "shared-drive mode if this Blender cannot run in the background"
                % (self.blender_binary, e)
            )
        report = None
        try:
            with open(report_path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            pass
        if done.returncode != 0 or report is None or not os.path.isfile(packed):
            said = [
                line
                for line in (done.stdout + done.stderr).decode("utf-8", "replace").splitlines()
                if "Error" in line or "Traceback" in line or "renderfarm pack" in line
            ]
            raise BrokerError(
                "Blender could not make a packed copy of the scene (exit code %s): %s"
                % (done.returncode, "; ".join(said) or "it said nothing about why")
            )
        for w in report.get("warnings", []):
            where = " (%s)" % w["path"] if w.get("path") else ""
            self.warnings.append(
                "packing cannot carry the %s \"%s\"%s: the workers will not have it; bake it "
                "into the scene, or submit in shared-drive mode" % (w.get("kind"), w.get("name"), where)
            )
        return packed


class Recent:
    """The artist's recent renders and their previews, fetched on a thread
    of their own at most every `interval` seconds while someone looks."""

    def __init__(self, folder, interval=2.0, limit=5):
        self.folder = folder
        self.interval = interval
        self.limit = limit
        self.lock = threading.Lock()
        self.renders = []
        self.error = None
        # render id -> (preview file, its digest); the interface thread
        # loads each new file once.
        self.previews = {}
        self.fetching = False
        self.last = 0.0
        # When the panel last drew the list: it refreshes only while seen.
        self.seen_at = 0.0
        # Which broker and token the list is of: another one empties it.
        self.source = None
        # Bumped with each answer, so the interface redraws only on news.
        self.generation = 0

    def seen(self):
        with self.lock:
            self.seen_at = time.monotonic()

    def wanted(self):
        """True when a refresh is due and the panel was on screen lately
        (a redraw of a hidden panel draws nothing, so this stops by itself)."""
        with self.lock:
            seen_lately = time.monotonic() - self.seen_at < 2 * self.interval + 1
        return seen_lately and self.due()

    def due(self):
        with self.lock:
            return not self.fetching and time.monotonic() - self.last >= self.interval

    def refresh_soon(self):
        with self.lock:
            self.last = 0.0

    def follow(self, source):
        """Lists the renders of `source` (the broker URL and token) from now
        on; an answer still coming from the previous one is dropped."""
        with self.lock:
            if source != self.source:
                self.source = source
                self.renders, self.error, self.last = [], None, 0.0
                self.generation += 1

    def failed(self, error):
        """A refresh that could not start (no token, a bad URL): said in
        the panel, tried again after the interval."""
        with self.lock:
            self.renders, self.error = [], error
            self.last = time.monotonic()

    def start(self, broker):
        with self.lock:
            if self.fetching:
                return
            self.fetching = True
            source = self.source
        threading.Thread(target=self._fetch, args=(broker, source), name="renderfarm-recent", daemon=True).start()

    def _fetch(self, broker, source):
        renders, error, previews = [], None, {}
        try:
            renders = broker.my_renders(self.limit)
            for render in renders:
                with self.lock:
                    fetched = render["id"] in self.previews
                if fetched and render.get("status") in ("completed", "failed", "canceled"):
                    continue
                data = broker.preview(render["id"])
                if data is None:
                    continue
                digest = hashlib.sha256(data).hexdigest()[:16]
                with self.lock:
                    known = self.previews.get(render["id"])
                if known and known[1] == digest:
                    continue
                os.makedirs(self.folder, exist_ok=True)
                path = os.path.join(self.folder, "%s-%s.jpg" % (render["id"], digest))
                with open(path, "wb") as f:
                    f.write(data)
                previews[render["id"]] = (path, digest)
        except BrokerError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - shown in the panel rather than lost
            error = "listing your renders failed unexpectedly (%s: %s)" % (type(e).__name__, e)
        with self.lock:
            self.fetching = False
            if source != self.source:
                return
            if error is None:
                self.renders = renders
            self.error = error
            self.previews.update(previews)
            self.last = time.monotonic()
            self.generation += 1
