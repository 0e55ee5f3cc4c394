"""The job queue: the replicated job book (``book``), the operations users
run on it (``operations``), its replication between peers, the server
election, the scheduler that runs on the server, watch folders, and the
control-socket methods for jobs (``api``).
"""
