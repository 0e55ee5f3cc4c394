"""The control socket: a Unix socket through which the ``rendernode``
command and the Python client (``node.client``) reach the local daemon; the
caller is identified by SO_PEERCRED.
"""
