"""Moving bytes between nodes: the content-addressed chunk store
(``store``), the peer-to-peer swarm that fetches chunks, bulk transfers over
peer sessions, and a job's assets (``jobassets``: collected at submit,
materialised on the worker).
"""
