"""Makes a tiny Blender scene: a cube, a camera and a sun, Cycles on the CPU.

    blender -b --factory-startup --python make_cube.py -- OUT.blend [WIDTH HEIGHT SAMPLES]

Defaults: 32 x 18 pixels, 2 samples, frames 1-4, the cube turning a quarter
turn over them.  The rendernode tests build their scene with this script.
"""

import math
import sys

import bpy

args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
if not args:
    sys.exit("usage: blender -b --python make_cube.py -- OUT.blend [WIDTH HEIGHT SAMPLES]")
out = args[0]
width, height, samples = (int(a) for a in (args[1:4] + ["32", "18", "2"][len(args[1:4]):]))

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
bpy.ops.mesh.primitive_cube_add(size=2)
cube = bpy.context.object
material = bpy.data.materials.new("Orange")
material.use_nodes = True
material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.9, 0.35, 0.05, 1)
cube.data.materials.append(material)
cube.rotation_euler = (0, 0, 0)
cube.keyframe_insert("rotation_euler", frame=1)
cube.rotation_euler = (0, 0, math.pi / 2)
cube.keyframe_insert("rotation_euler", frame=4)

camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
scene.collection.objects.link(camera)
camera.location = (6, -6, 4)
camera.rotation_euler = (math.radians(63), 0, math.radians(45))
scene.camera = camera
sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
scene.collection.objects.link(sun)
sun.rotation_euler = (math.radians(40), math.radians(20), 0)
sun.data.energy = 4

world = bpy.data.worlds.new("World")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.2, 0.3, 0.6, 1)
scene.world = world
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = samples
scene.render.resolution_x = width
scene.render.resolution_y = height
scene.render.resolution_percentage = 100
scene.frame_start, scene.frame_end = 1, 4
bpy.ops.wm.save_as_mainfile(filepath=out)
