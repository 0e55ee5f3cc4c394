"""The web dashboard every node serves: the farm, its queue, its jobs' frames
with previews, and the farm's messages, live, in a browser.

``service`` runs it (hypercorn on trio) and lets local users in through the
control socket; ``sessions`` holds login tokens and sessions; ``app`` routes
HTTP; ``views`` builds what the pages show from this node's own copies;
``events`` turns changes into server-sent events; ``farmstatus`` tells peers
what this machine is doing.  The page itself is ``static/``: plain HTML, CSS
and JavaScript, no build step.
"""
