"""Running as a service: installing the systemd unit (``install``), the farm
token on disk (``token``), power (Wake-on-LAN, sleep inhibition) and logging
to the journal (``logs``).
"""
