"""The scheduler's decisions, as pure parts: no trio, no peers, no I/O; the
time is passed in (``now``, monotonic seconds).  ``leases`` holds the
assignments the server waits on and their deadlines, ``queue`` the index of
queued and open tasks the job book's change listener keeps current, and
``policy`` decides who gets which task.  ``node.jobs.scheduler`` carries the
decisions out: it writes the book and sends the messages."""
