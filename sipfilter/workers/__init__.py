"""`sip.workers: N`: N event-loop processes behind one set of listening sockets.

The `sipfilter run` process becomes a supervisor (supervisor.py): it binds the UDP listeners, forks the
workers (each a full `App`), restarts one that dies and forwards SIGHUP and SIGTERM. Every worker has its own
socket on each listening address (SO_REUSEPORT), and the kernel queues each datagram on its owner's socket
(steering.py), so a datagram wakes one worker; one that the kernel could not place and that belongs to
another worker (routing.py) is handed over to it on a local datagram socket (worker.py). A worker answers
from its own socket, on the same address. Worker 0 serves the admin HTTP API and a /metrics merged from every
worker's registry (metrics_merge.py).
"""
