"""Compliance policy: CallFacts + compiled rule pack + store lookups → Decision (see engine.PolicyEngine).

Pure rule logic; no SIP parsing, no sockets. Public names are re-exported here.
"""

from sipfilter.policy.engine import PolicyEngine, UnknownTrunk
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import Normaliser, Number
from sipfilter.policy.rulepack import RuleSet, normaliser_for
from sipfilter.policy.verdict import Decision, Outcome, Verdict

__all__ = [
    "CallFacts",
    "Decision",
    "Normaliser",
    "Number",
    "Outcome",
    "PolicyEngine",
    "RuleSet",
    "UnknownTrunk",
    "Verdict",
    "normaliser_for",
]
