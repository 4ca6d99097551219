# renderfarm-worker: path mapping inside the .blend (path variables, GET
# /variables). The agent gives this to Blender as `--python-expr` right after
# `-b FILE`, before the render's own arguments, cold and warm alike, followed
# by a call of renderfarm_remap_paths with the assignment's path_mappings as
# JSON: [{"from": "P:\\projects", "to": "/mnt/projects", "ignore_case": true}].
# A file saved on another platform names its images, linked libraries and
# other files by that platform's paths; each such absolute path that starts
# with a mapping's `from` (on a folder boundary; without regard to case, and
# with / and \ the same for a Windows `from`, when ignore_case says so) is
# rewritten to start with its `to`, in the separators of `to`'s platform.
# Blender-relative paths (//...) are left alone: they follow the .blend. Data
# linked from a library keeps the library's paths (Blender does not let a
# file change another file's data). Every rewrite is printed, so the task's
# log says what was remapped.
import json


def windows_form(path):
    return (len(path) >= 2 and path[1] == ":" and path[0].isalpha()) or path.startswith("\\\\")


def remap_path(path, mappings):
    """`path` rewritten by the first mapping whose `from` starts it, or None."""
    if not path or path.startswith("//"):
        return None
    for m in mappings:
        source, target = m["from"], m["to"]
        windows = windows_form(source)
        length = len(source)
        if len(path) < length:
            continue
        head = path[:length]
        if windows:
            head, source = head.replace("/", "\\"), source.replace("/", "\\")
        if m.get("ignore_case"):
            head, source = head.casefold(), source.casefold()
        if head != source:
            continue
        rest = path[length:]
        separators = "/\\" if windows else "/"
        if rest and rest[0] not in separators:
            continue
        rest = rest.lstrip(separators)
        if windows:
            rest = rest.replace("\\", "/")
        if windows_form(target):
            rest = rest.replace("/", "\\")
            return target + ("\\" + rest if rest else "")
        return target + ("/" + rest if rest else "")
    return None


def renderfarm_remap_paths(mappings_json):
    import bpy

    mappings = json.loads(mappings_json)
    say = "renderfarm-worker: path mapping:"

    def remap(path):
        return remap_path(path, mappings)

    count = 0

    def visit(blocks, kind, attribute="filepath", reload=False):
        nonlocal count
        for block in blocks:
            if getattr(block, "library", None) is not None:
                continue
            if getattr(block, "packed_file", None) is not None:
                continue
            old = getattr(block, attribute, "")
            new = remap(old)
            if new is None or new == old:
                continue
            setattr(block, attribute, new)
            count += 1
            print(f"{say} {kind} {block.name!r}: {old} -> {new}", flush=True)
            if reload:
                try:
                    block.reload()
                except Exception as e:  # a missing file fails as Blender says at render
                    print(f"{say} could not reload {kind} {block.name!r}: {e}", flush=True)

    # Libraries first: reloading one brings in its data (and its own paths).
    visit(bpy.data.libraries, "library", reload=True)
    visit(bpy.data.images, "image", reload=True)
    visit(bpy.data.movieclips, "movie clip")
    visit(bpy.data.sounds, "sound")
    visit(bpy.data.cache_files, "cache file")
    visit(bpy.data.volumes, "volume")
    visit([f for f in bpy.data.fonts if f.filepath != "<builtin>"], "font")
    # Video sequencer strips: movies and sounds by file, images by folder.
    for scene in bpy.data.scenes:
        editor = scene.sequence_editor
        if editor is None:
            continue
        visit([s for s in editor.sequences_all if s.type in ("MOVIE", "SOUND")],
              f"strip of scene {scene.name!r}")
        visit([s for s in editor.sequences_all if s.type == "IMAGE"],
              f"image strip of scene {scene.name!r}", attribute="directory")
    print(f"{say} {count} path(s) remapped with {len(mappings)} mapping(s)", flush=True)
