"""`sip.workers: N`: N event-loop processes behind one set of listening sockets.

The `sipfilter run` process becomes a supervisor (supervisor.py): it binds the UDP listeners, forks the
workers (each a full `App`), restarts one that dies and forwards SIGHUP and SIGTERM. Every worker reads the
shared sockets; a datagram that belongs to another worker (routing.py) is handed over to it on a local
datagram socket (worker.py), and the owner answers from the shared socket. Worker 0 serves the admin HTTP
API and a /metrics merged from every worker's registry (metrics_merge.py).
"""
