# renderfarm-worker: GPU set-up of a GPU slot's Blender (--gpus).
# The agent gives this to Blender as `--python-expr` right after `-b FILE`,
# before the render's own arguments, cold and warm alike; CUDA shows Blender
# the slot's GPU alone (CUDA_VISIBLE_DEVICES, counted in PCI bus order as
# nvidia-smi counts). It makes Cycles render every scene of the file on that
# GPU (OptiX when this Blender has it, else CUDA) and never on the CPU. A
# Blender that cannot render on it prints an "Error:" line saying why and
# exits with code 1, so the chunk fails with that reason: a GPU slot that
# quietly rendered on the CPU would take a GPU's share of the work at a
# fraction of its speed, with nobody told.
import os
import sys

import bpy


def renderfarm_gpu_setup():
    slot = "renderfarm-worker GPU slot (CUDA_VISIBLE_DEVICES=%s)" % os.environ.get(
        "CUDA_VISIBLE_DEVICES", "")

    def fail(why):
        print(f"Error: {slot}: {why}", flush=True)
        sys.stderr.flush()
        # Not an exception: Blender would print it and render on the CPU.
        os._exit(1)

    addon = bpy.context.preferences.addons.get("cycles")
    if addon is None:
        fail("the Cycles add-on is not enabled in this Blender's preferences; enable it")
    prefs = addon.preferences
    built = []
    found = []
    for kind in ("OPTIX", "CUDA"):
        try:
            prefs.compute_device_type = kind
        except TypeError:
            # This Blender was built without it.
            continue
        built.append(kind)
        found = [d for d in prefs.get_devices_for_type(kind) if d.type == kind]
        if found:
            break
    if not built:
        fail("this Blender was built without CUDA and OptiX; point renderfarm-worker's "
             "--blender at a Blender that has them (the builds from blender.org do)")
    if not found:
        fail(f"Blender sees no {' or '.join(built)} device; check the GPU and its "
             "driver with nvidia-smi, or run this agent without --gpus to render on the CPU")
    for device in prefs.devices:
        # The CPU stays out: every slot of the machine would share its cores.
        device.use = device.type == kind
    for scene in bpy.data.scenes:
        scene.cycles.device = "GPU"
    names = ", ".join(sorted({d.name for d in found}))
    print(f"{slot}: Cycles renders on {kind}: {names}", flush=True)


renderfarm_gpu_setup()
