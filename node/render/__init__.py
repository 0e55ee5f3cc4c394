"""Rendering on this node: the worker that runs the server's assignments
through the renderer backends (``node.renderers``), and the results that
carry finished frames back to the submitter and the repository.
"""
