# Keeps one .blend file loaded and renders the frame ranges renderfarm-worker
# sends, so that a render's later chunks skip Blender's start-up and the
# file's load. Run by the agent through Blender itself:
#   blender -b FILE -t 0 --python warm_driver.py -- FILE
# Reads one JSON object a line on stdin:
#   {"chunk": N, "from": A, "to": B, "output": "/out/f_####", "engine": null}
# and renders it as `blender -b FILE -o OUTPUT [-E ENGINE] -s A -e B -t 0 -a`
# would, printing Blender's usual "Fra:" and "Saved:" lines, then
#   renderfarm-warm: chunk N done
# or, when the file's own scripts ran at load (they may keep state from frame
# to frame, which a fresh Blender would not have), once:
#   renderfarm-warm: chunk N done, last
# after which Blender quits, so that every chunk of such a file is rendered
# by a fresh Blender, as cold.
# A chunk that fails prints Blender's "Error: ..." line and ends the process
# with exit code 1, as the cold command line does; the agent starts the next
# chunk cold. End of stdin ends Blender normally.
#
# Between chunks the driver puts back what it changed and what rendering
# moves (the scene's frame range, current frame, output path, engine), so
# each chunk starts from the scene as loaded. It cannot put back what the
# file's own scripts keep (module-level variables of auto-run scripts,
# handlers they register, bpy.app.driver_namespace entries), nor data a
# frame-change handler writes into the scene: a file whose scripts ran is
# therefore never reused (see above).
import json
import os
import sys

import bpy

PREFIX = "renderfarm-warm:"


def say(text):
    print(f"{PREFIX} {text}", flush=True)


def fail(message):
    # Blender's own spelling, which the agent's parser collects as an error.
    print(f"Error: {message}", flush=True)
    sys.stderr.flush()
    # Not sys.exit: Blender would go on with the rest of its command line.
    os._exit(1)


def main():
    argv = sys.argv[sys.argv.index("--") + 1:]
    expected = os.path.realpath(argv[0])
    # A file Blender could not read leaves its start-up scene loaded, which
    # must never be rendered in the file's place.
    if not bpy.data.filepath or os.path.realpath(bpy.data.filepath) != expected:
        fail(f"the warm driver expected {expected} to be loaded, not {bpy.data.filepath!r}")
    scene = bpy.context.scene
    loaded = {
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "frame_current": scene.frame_current,
        "filepath": scene.render.filepath,
        "engine": scene.render.engine,
    }
    # Registered text blocks run at load only when auto-run is allowed
    # (Blender's preferences or -y); blocked ones set autoexec_fail.
    scripts_ran = any(t.use_module for t in bpy.data.texts) and not bpy.app.autoexec_fail
    if scripts_ran:
        say("the file's scripts ran at load: every chunk gets a fresh Blender")
    say("ready")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            chunk = json.loads(line)
            number, first, last = int(chunk["chunk"]), int(chunk["from"]), int(chunk["to"])
            output, engine = str(chunk["output"]), chunk.get("engine")
        except (ValueError, KeyError, TypeError) as e:
            fail(f"the warm driver cannot read the chunk {line!r}: {e}")
        # In the cold command line's order: -o, -E, -s, -e.
        scene.render.filepath = output
        if engine is not None:
            try:
                scene.render.engine = engine
            except TypeError:
                fail(f"engine not found '{engine}'")
        scene.frame_start = first
        scene.frame_end = last
        try:
            bpy.ops.render.render(animation=True)
        except RuntimeError:
            # Blender has printed the reason as an "Error:" line already.
            say(f"chunk {number} failed")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        sys.stderr.flush()
        if scripts_ran:
            say(f"chunk {number} done, last")
            break
        scene.render.filepath = loaded["filepath"]
        scene.render.engine = loaded["engine"]
        scene.frame_start = loaded["frame_start"]
        scene.frame_end = loaded["frame_end"]
        # frame_set re-evaluates the animation there, as the load did.
        scene.frame_set(loaded["frame_current"])
        say(f"chunk {number} done")

main()
