"""Rendering on this node: the worker that runs the server's assignments
through the renderer backends (``node.renderers``) in a sandbox
(``sandbox``), the results that carry finished frames and tiles back to the
submitter and the repository, previews, and the submitter's side of a tiled
frame (``tiles``, ``assembly``).
"""
