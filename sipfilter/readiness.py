"""Which lists the trunks check that the store has never imported: said by name at start-up, on reload,
by `/readyz` and by `sipfilter config check`.

Pure look-ups on a config and an open store (list metadata is in memory); no I/O, no policy decision.
"""

from __future__ import annotations

from typing import Any

from sipfilter.config import Config
from sipfilter.stores.base import StoreUnavailable


def lists_in_use(config: Config) -> dict[str, tuple[str, ...]]:
    """Every list name a trunk reads (do-not-call lists and an authorised caller-ID list) → those trunks."""
    users: dict[str, list[str]] = {}
    for trunk in config.trunks.values():
        names = list(trunk.lists.dnc)
        if isinstance(trunk.lists.authorised_caller_ids, str):
            names.append(trunk.lists.authorised_caller_ids)
        for name in names:
            users.setdefault(name, []).append(trunk.name)
    return {name: tuple(trunks) for name, trunks in sorted(users.items())}


def missing_lists(config: Config, store: Any) -> dict[str, tuple[str, ...]]:
    """The lists in use that the store has never imported (none when there is no store yet: not known)."""
    if store is None:
        return {}
    missing = {}
    for name, trunks in lists_in_use(config).items():
        try:
            known = store.list_info(name) is not None
        except StoreUnavailable:
            continue  # the store's own check says it is down
        if not known:
            missing[name] = trunks
    return missing


def describe_missing(config: Config, missing: dict[str, tuple[str, ...]]) -> list[str]:
    """One sentence per missing list: which trunks check it and what they do meanwhile."""
    out = []
    for name, trunks in missing.items():
        effects = []
        for trunk_name in trunks:
            trunk = config.trunks[trunk_name]
            if name not in trunk.lists.dnc:  # the trunk's authorised caller-ID list
                effects.append(f"trunk {trunk_name} refuses every automated call (caller-id.unauthorised)")
            elif trunk.on_stale_list == "reject":
                effects.append(f"trunk {trunk_name} refuses every call (list.stale)")
            else:
                effects.append(f"trunk {trunk_name} relays calls without checking it "
                               "(on_stale_list: allow-and-alert)")
        out.append(f"list {name!r} was never imported: {'; '.join(effects)}. "
                   f"Import it: sipfilter lists import --list {name} FILE")
    return out
