// A red ball orbits a gold post over a checker floor.  clock runs 0..1 over
// the animation: render frames 1-24 with initial_frame 1 and final_frame 24.
#version 3.7;
#include "orbit_colours.inc"

global_settings { assumed_gamma 1.0 }
camera { location <0, 3, -7> look_at <0, 0.8, 0> }
light_source { <4, 8, -6> color rgb 1 }
background { color Sky }

plane { y, 0 pigment { checker color Floor1 color Floor2 } }
cylinder { <0, 0, 0>, <0, 1.6, 0>, 0.25 pigment { color Gold } finish { specular 0.6 } }
sphere {
  <2 * cos(2 * pi * clock), 0.6, 2 * sin(2 * pi * clock)>, 0.6
  pigment { color Ball } finish { specular 0.4 }
}
