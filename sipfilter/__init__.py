"""sipfilter: a SIP B2BUA that enforces French telemarketing rules inline on contact-center trunks."""

__version__ = "0.1.0"
