# Builds a small animated scene and saves it as a .blend file. Run by
# renderfarm through Blender itself:
#   blender -b --factory-startup --python scene.py -- OUT FRAMES WIDTH HEIGHT SAMPLES DENOISE
import math
import sys

import bpy

out, frames, width, height, samples, denoise = sys.argv[sys.argv.index("--") + 1:]
frames, width, height, samples = int(frames), int(width), int(height), int(samples)

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = samples
# Debian's Blender is built without OpenImageDenoiser: with denoising on, the
# render fails (which is what the failure tests want).
scene.cycles.use_denoising = denoise == "1"
scene.render.resolution_x = width
scene.render.resolution_y = height
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.frame_start = 1
scene.frame_end = frames

bpy.ops.mesh.primitive_monkey_add(size=2)
subject = bpy.context.active_object
subject.rotation_euler = (0.0, 0.0, 0.0)
subject.keyframe_insert("rotation_euler", frame=1)
subject.rotation_euler = (0.0, 0.0, 2 * math.pi)
subject.keyframe_insert("rotation_euler", frame=max(frames, 2))

bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -1.5))
bpy.ops.object.camera_add(location=(0, -7, 2), rotation=(math.radians(80), 0, 0))
scene.camera = bpy.context.active_object
bpy.ops.object.light_add(type="SUN", location=(3, -3, 6))
bpy.context.active_object.data.energy = 4.0

bpy.ops.wm.save_as_mainfile(filepath=out)
