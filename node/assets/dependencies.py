"""The files a scene needs besides itself, by renderer: the built-in
renderer's textures, what Blender itself reports (``blender_deps``), POV-Ray's
``#include`` and image files, and the ``--asset`` paths a job lists.

Imported by the file helper (``node.service.asuser``), which runs these as the
submitting user: keep it to the standard library and the renderer modules.
"""

from __future__ import annotations

import os
import re

_POV_INCLUDE = re.compile(r'#include\s+"([^"]+)"')
_POV_INI = re.compile(r'^\s*(?:Input_File_Name|Include_Ini)\s*=\s*"?([^"\r\n;]+?)"?\s*$', re.I | re.M)
POV_LIBRARY = ("/usr/share/povray-3.7/include", "/usr/share/povray/include",
               "/usr/local/share/povray-3.7/include")  #: where POV-Ray finds its standard includes
_POV_FILE = re.compile(r'\b(?:png|jpeg|jpg|tga|tiff|gif|ppm|pgm|sys|exr|hdr|iff|df3)\s+"([^"]+)"', re.I)


def povray_dependencies(scene: str) -> list[str]:
    """Files a POV-Ray scene includes or maps, recursively; system includes are skipped."""
    found: list[str] = []
    todo = [scene]
    seen = {os.path.abspath(scene)}
    while todo:
        path = todo.pop()
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        base = os.path.dirname(os.path.abspath(path))
        names = _POV_INCLUDE.findall(text) + _POV_FILE.findall(text)
        if path.lower().endswith(".ini"):
            names += [n.strip() for n in _POV_INI.findall(text)]
        for name in names:
            full = os.path.normpath(os.path.join(base, name))
            if full in seen:
                continue
            seen.add(full)
            if (not os.path.exists(full) and not os.path.isabs(name)
                    and any(os.path.exists(os.path.join(d, name)) for d in POV_LIBRARY)):
                continue  # a standard include from POV-Ray's library path
            found.append(full)
            if name.lower().endswith((".inc", ".pov", ".ini")):
                todo.append(full)
    return found


def dependencies(scene: str, renderer: str, extra: list[str]) -> list[str]:
    """Absolute paths of every file the scene needs, besides the scene."""
    deps: list[str] = []
    if renderer == "builtin":
        from node.renderers.builtin import scene_dependencies

        deps = scene_dependencies(scene)
    elif renderer == "blender":
        from node.renderers.blender_deps import blend_dependencies

        deps = blend_dependencies(scene)
    elif renderer == "povray":
        deps = povray_dependencies(scene)
    deps += [os.path.abspath(p) for p in extra]
    return list(dict.fromkeys(os.path.abspath(d) for d in deps))
