# Makes a self-contained copy of a .blend file for an upload to the broker,
# and says what it could not put in it. The one packing rule of the farm:
# `renderfarm submit --upload` (which embeds this file) and the Blender
# add-on (which ships it beside __init__.py) both run it, never import it, in
# a Blender of its own, so the artist's session is never altered:
#   blender -b --factory-startup FILE --python-exit-code 1 --python pack.py -- COPY REPORT
# COPY: where the packed copy is written (the artist's file is never saved:
# `copy=True` writes elsewhere and leaves the open file's path alone).
# REPORT: a JSON file {"packed": [...], "warnings": [{"kind", "name", "path"}]}.
#
# Packing carries single image files, sounds, fonts and linked libraries.
# What it cannot carry (sequences, movies, caches on disk) still points at
# the artist's disk, where no render machine can see it: those are reported,
# by the files they need, so the artist knows before the render is wrong.
import json
import os
import sys

import bpy

copy_path, report_path = sys.argv[sys.argv.index("--") + 1:]

if not bpy.data.filepath:
    raise SystemExit("renderfarm pack: no .blend file is open")

warnings = []


def warn(kind, name, path):
    warnings.append({"kind": kind, "name": name, "path": bpy.path.abspath(path) if path else ""})


# Relative paths name files beside the artist's file; the copy is saved
# elsewhere, so what stays unpacked keeps an absolute path (still the
# artist's, which is what the warnings say).
bpy.ops.file.make_paths_absolute()

for image in bpy.data.images:
    if image.packed_file or image.source in {"GENERATED", "VIEWER"}:
        continue
    if image.source == "SEQUENCE":
        warn("image sequence", image.name, image.filepath)
    elif image.source == "MOVIE":
        warn("movie", image.name, image.filepath)

for clip in bpy.data.movieclips:
    warn("movie clip", clip.name, clip.filepath)

for cache in bpy.data.cache_files:
    kind = "USD cache" if cache.filepath.lower().endswith((".usd", ".usda", ".usdc", ".usdz")) else "Alembic cache"
    warn(kind, cache.name, cache.filepath)


def point_cache(owner, cache):
    if cache is not None and cache.use_disk_cache:
        path = cache.filepath or "//blendcache_" + os.path.splitext(os.path.basename(bpy.data.filepath))[0]
        warn("simulation cache on disk", owner, path)


for obj in bpy.data.objects:
    for modifier in obj.modifiers:
        name = obj.name + " / " + modifier.name
        if modifier.type == "FLUID" and modifier.fluid_type == "DOMAIN":
            warn("fluid cache", name, modifier.domain_settings.cache_directory)
        elif modifier.type == "OCEAN" and modifier.is_cached:
            warn("ocean cache", name, modifier.filepath)
        elif modifier.type == "MESH_SEQUENCE_CACHE" and modifier.cache_file is None:
            warn("Alembic cache", name, "")
        elif hasattr(modifier, "point_cache"):
            point_cache(name, modifier.point_cache)
        elif modifier.type == "DYNAMIC_PAINT" and modifier.canvas_settings:
            for surface in modifier.canvas_settings.canvas_surfaces:
                point_cache(name + " / " + surface.name, surface.point_cache)
    for system in obj.particle_systems:
        point_cache(obj.name + " / " + system.name, system.point_cache)

for scene in bpy.data.scenes:
    world = scene.rigidbody_world
    if world is not None:
        point_cache(scene.name + " / rigid body world", world.point_cache)

packed = []
try:
    bpy.ops.file.pack_all()
except RuntimeError as e:
    # A file that cannot be read: reported below as not packed.
    print("renderfarm pack: pack_all:", e)
try:
    if bpy.data.libraries:
        bpy.ops.file.pack_libraries()
except RuntimeError as e:
    print("renderfarm pack: pack_libraries:", e)

for image in bpy.data.images:
    if image.packed_file:
        packed.append(image.filepath or image.name)
    elif image.source in {"FILE", "TILED"} and image.filepath:
        found = os.path.isfile(bpy.path.abspath(image.filepath))
        warn("image" if found else "missing image", image.name, image.filepath)
for volume in bpy.data.volumes:
    if volume.packed_file is None:
        warn("VDB volume", volume.name, volume.filepath)
for library in bpy.data.libraries:
    if library.packed_file is None:
        warn("linked library", library.name, library.filepath)
    else:
        packed.append(library.filepath)

bpy.ops.wm.save_as_mainfile(filepath=copy_path, copy=True, compress=False)

with open(report_path, "w", encoding="utf-8") as f:
    json.dump({"packed": packed, "warnings": warnings}, f)
