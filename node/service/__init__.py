"""Running as a service: installing the systemd unit (``install``), the farm
token on disk (``token``), the state dir's lock (``statelock``), the accounts
renders and deliveries run as (``accounts``, ``runas``, ``asuser``,
``privilege``), power (Wake-on-LAN, sleep inhibition) and logging to the
journal (``logs``).
"""
