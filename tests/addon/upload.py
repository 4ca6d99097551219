# Runs the add-on's broker.py (from the zip `renderfarm addon` writes) in
# Blender's own Python, for tests/addon.rs:
#   blender -b --factory-startup --python upload.py -- ZIP BROKER TOKEN DIR
# Sends the first third of a file as a cut upload would, then lets the
# add-on upload it, then upload it again; prints one JSON line "RESULT {...}".
import importlib.util
import json
import os
import sys
import urllib.request
import zipfile

zip_path, broker_url, token, folder = sys.argv[sys.argv.index("--") + 1:]
with zipfile.ZipFile(zip_path) as z:
    z.extract("renderfarm_addon/broker.py", folder)
spec = importlib.util.spec_from_file_location("broker", os.path.join(folder, "renderfarm_addon", "broker.py"))
broker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(broker)

path = os.path.join(folder, "scene.blend")
data = os.urandom(3_000_000)
with open(path, "wb") as f:
    f.write(data)
sha256 = broker.sha256_file(path)
farm = broker.Broker(broker_url, token)
cut = urllib.request.Request(
    farm.url + "/files/" + sha256,
    data=data[:1_000_000],
    method="PUT",
    headers={
        "Authorization": "Bearer " + token,
        "Content-Range": "bytes 0-999999/3000000",
        "Content-Type": "application/octet-stream",
    },
)
with urllib.request.urlopen(cut) as answer:
    cut_status = answer.status
progress = []
sent = farm.upload(path, sha256, lambda done, total: progress.append(done))
again = farm.upload(path, sha256)
print("RESULT " + json.dumps({
    "sha256": sha256,
    "cut_status": cut_status,
    "sent": sent,
    "first_progress": progress[0] if progress else None,
    "last_progress": progress[-1] if progress else None,
    "again": again,
}))
