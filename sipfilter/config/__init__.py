"""The configuration as data: config/sipfilter.yaml read, validated and typed (errors name file:line:field).

A leaf of the package graph: it imports nothing of sipfilter outside this package. `reader` is the
line-tracking YAML loader and the `Section` reader, `model` the typed dataclasses, `sections` the readers of
the plain sections. Loading a whole configuration, with the parts its owners compile (rule sets, limits,
STIR/SHAKEN, TLS contexts), is sipfilter.configure.load_config.
"""

from sipfilter.config.model import (
    RESTART_KEYS,
    TRANSPORTS,
    AdminConfig,
    AuditConfig,
    AuthConfig,
    Config,
    DigestUserConfig,
    HeaderMatch,
    HeaderPolicy,
    Listen,
    LoggingConfig,
    SipConfig,
    SipLimits,
    SipTimers,
    StoreConfig,
    Target,
    TargetTls,
    TrunkConfig,
    TrunkLists,
    TrunkMatch,
    listen_addresses,
    restart_required,
)
from sipfilter.config.reader import ConfigError, Section, YamlMap, YamlSeq, load_yaml, merge_overrides
from sipfilter.config.sections import ADMIN_TOKEN_MIN_BYTES, admin_token_problem, read_token_file

__all__ = [
    "ADMIN_TOKEN_MIN_BYTES",
    "RESTART_KEYS",
    "TRANSPORTS",
    "AdminConfig",
    "AuditConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DigestUserConfig",
    "HeaderMatch",
    "HeaderPolicy",
    "Listen",
    "LoggingConfig",
    "Section",
    "SipConfig",
    "SipLimits",
    "SipTimers",
    "StoreConfig",
    "Target",
    "TargetTls",
    "TrunkConfig",
    "TrunkLists",
    "TrunkMatch",
    "YamlMap",
    "YamlSeq",
    "admin_token_problem",
    "listen_addresses",
    "load_yaml",
    "merge_overrides",
    "read_token_file",
    "restart_required",
]
