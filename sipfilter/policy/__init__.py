"""Compliance policy: CallFacts + compiled rule pack + store lookups → Decision (see engine.PolicyEngine).

Pure rule logic on plain facts; no SIP parsing (sipfilter.b2bua.facts builds the facts), no sockets.
Public names are re-exported here.
"""

from sipfilter.policy.engine import PolicyEngine, UnknownTrunk
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import Normaliser, Number, NumberReader
from sipfilter.policy.rulepack import RuleSet, normaliser_for
from sipfilter.policy.verdict import Decision, Outcome, Verdict

__all__ = [
    "CallFacts",
    "Decision",
    "Normaliser",
    "Number",
    "NumberReader",
    "Outcome",
    "PolicyEngine",
    "RuleSet",
    "UnknownTrunk",
    "Verdict",
    "normaliser_for",
]
