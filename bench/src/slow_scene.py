# Builds a scene that is slow to load and quick to render, and saves it as a
# .blend file: what warm Blender (issue 17) saves on every chunk after the
# first. Run by renderfarm-bench through Blender itself:
#   blender -b --factory-startup --python slow_scene.py -- OUT FRAMES COPIES SUBDIVISIONS IMAGE_SIZE
# The weight is data Blender must read from the file at every start: a dense
# mesh with its modifiers applied (kept out of the render, so it costs the
# file's load and not each frame's), and a large image packed into the file,
# which the render decodes once per process.
import math
import random
import sys

import bpy

out, frames, copies, subdivisions, image_size = sys.argv[sys.argv.index("--") + 1:]
frames, copies = int(frames), int(copies)
subdivisions, image_size = int(subdivisions), int(image_size)

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 4
scene.cycles.use_denoising = False
scene.render.resolution_x = 64
scene.render.resolution_y = 48
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.frame_start = 1
scene.frame_end = frames

bpy.ops.mesh.primitive_monkey_add(size=2)
subject = bpy.context.active_object
subject.keyframe_insert("rotation_euler", frame=1)
subject.rotation_euler = (0.0, 0.0, 2 * math.pi)
subject.keyframe_insert("rotation_euler", frame=max(frames, 2))

for copy in range(copies):
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=6, location=(4 + 3 * copy, 4, 0))
    dense = bpy.context.active_object
    modifier = dense.modifiers.new("subdivide", "SUBSURF")
    modifier.levels = subdivisions
    modifier.render_levels = subdivisions
    displace = dense.modifiers.new("displace", "DISPLACE")
    displace.strength = 0.05
    bpy.ops.object.modifier_apply(modifier="subdivide")
    bpy.ops.object.modifier_apply(modifier="displace")
    dense.hide_render = True

# A noise image, packed: its bytes are in the .blend file.
image = bpy.data.images.new("baked", width=image_size, height=image_size)
# Random bytes do not compress: the packed PNG is as large as the image.
rng = random.Random(17)
pixels = [rng.random() for _ in range(image_size * image_size * 4)]
image.pixels.foreach_set(pixels)
image.filepath_raw = out + ".png"
image.file_format = "PNG"
image.save()
image.pack()

bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -1.5))
plane = bpy.context.active_object
material = bpy.data.materials.new("textured")
material.use_nodes = True
texture = material.node_tree.nodes.new("ShaderNodeTexImage")
texture.image = image
bsdf = material.node_tree.nodes["Principled BSDF"]
material.node_tree.links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
plane.data.materials.append(material)

bpy.ops.object.camera_add(location=(0, -7, 2), rotation=(math.radians(80), 0, 0))
scene.camera = bpy.context.active_object
bpy.ops.object.light_add(type="SUN", location=(3, -3, 6))
bpy.context.active_object.data.energy = 4.0

bpy.ops.wm.save_as_mainfile(filepath=out)
