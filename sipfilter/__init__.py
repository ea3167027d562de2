"""sipfilter: a SIP B2BUA that enforces French telemarketing rules inline on contact-center trunks."""

from sipfilter import compiled

__version__ = "0.1.0"

compiled.use_compiled()  # before anything imports the call path: compiled, unless stale or SIPFILTER_PURE
