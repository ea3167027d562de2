"""STIR/SHAKEN (France's MAN): PASSporT tokens, x5u certificates, verification and signing of `Identity`.

RFC 8224 (the SIP Identity header), RFC 8225 (PASSporT), RFC 8588 (SHAKEN), RFC 8226 (TNAuthList). No SIP
transport and no policy decision here: the B2BUA calls in (sipfilter/b2bua/identity.py), the policy reads
the finding as the identity.* rules (sipfilter/policy/identity.py).
"""
