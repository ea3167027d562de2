"""RFC 3261 §25 (and RFC 3966) ABNF written down once, as named regular-expression fragments and patterns.

Only strings and compiled patterns live here: no parsing logic, no state, no imports of other modules.
"""

from __future__ import annotations

import re
from typing import Final

# --- basic rules (RFC 3261 §25.1) -------------------------------------------------------------------
ALPHANUM: Final = r"A-Za-z0-9"
MARK: Final = r"\-_.!~*'()"
UNRESERVED: Final = ALPHANUM + MARK
ESCAPED: Final = r"%[0-9A-Fa-f]{2}"
WSP: Final = r"[ \t]"
# Folding is removed before values are stored, so LWS/SWS never contain CR or LF here.
LWS: Final = r"[ \t]+"
SWS: Final = r"[ \t]*"
TOKEN_CHARS: Final = r"\-!%*_+`'~.A-Za-z0-9"
TOKEN: Final = rf"[{TOKEN_CHARS}]+"
WORD: Final = r"[\-!%*_+`'~.A-Za-z0-9()<>:\\\"/\[\]?{}]+"
# The control characters but HTAB: what qdtext cannot hold and no header value may carry.
CTL_BUT_HTAB: Final = r"\x00-\x08\x0a-\x1f\x7f"
# qdtext allows any UTF-8 beyond ASCII; quoted-pair escapes any octet but CR and LF.
QDTEXT: Final = rf"[^\"\\{CTL_BUT_HTAB}]"
QUOTED_PAIR: Final = r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]"
# Runs of qdtext are matched at once; possessive quantifiers keep an unterminated quote linear-time.
QUOTED_STRING: Final = rf"\"(?:{QDTEXT}++|{QUOTED_PAIR})*+\""
QUOTED_STRING_RE: Final = re.compile(QUOTED_STRING)
QUOTED_PAIR_RE: Final = re.compile(r"\\(.)", re.DOTALL)  # unescapes: sub(r"\1", inner text)
CTL_RE: Final = re.compile(f"[{CTL_BUT_HTAB}]")
# LWS as RFC 3261 §25.1 writes it, line fold included: for values read before the parser unfolds them.
FOLDED_LWS_RE: Final = re.compile(rf"(?:{SWS}\r\n)?{LWS}")

# --- hosts (RFC 3261 §25.1 hostport; labels are taken liberally: '_' is common in the field) --------
# Labels are matched without the no-leading/trailing-hyphen rule so the pattern stays linear-time.
DOMAINLABEL: Final = r"[A-Za-z0-9_\-]+"
HOSTNAME: Final = rf"{DOMAINLABEL}(?:\.{DOMAINLABEL})*\.?"
IPV4ADDRESS: Final = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
IPV6REFERENCE: Final = r"\[[0-9A-Fa-f:.]+\]"
HOST: Final = rf"(?:{IPV6REFERENCE}|{HOSTNAME})"
PORT: Final = r"\d{1,5}"

# --- SIP URI (RFC 3261 §19.1.1, §25.1) ----------------------------------------------------------------
USER_UNRESERVED: Final = r"&=+$,;?/"
USER: Final = rf"(?:[{UNRESERVED}{USER_UNRESERVED}]|{ESCAPED})+"
PASSWORD: Final = rf"(?:[{UNRESERVED}&=+$,]|{ESCAPED})*"
PARAMCHAR: Final = rf"(?:[{UNRESERVED}\[\]/:&+$]|{ESCAPED})"
HNV_CHAR: Final = rf"(?:[{UNRESERVED}\[\]/?:+$]|{ESCAPED})"
URI_PARAM: Final = rf"{PARAMCHAR}+(?:={PARAMCHAR}+)?"
URI_HEADER: Final = rf"{HNV_CHAR}+={HNV_CHAR}*"
SCHEME: Final = r"[A-Za-z][A-Za-z0-9+\-.]*"

# The compiled URI pattern uses character classes (with '%') instead of the per-character alternation of
# the ABNF, which is ~2x faster; the %HH form of escapes is then checked with BAD_ESCAPE_RE.
USER_CHARS: Final = rf"[{UNRESERVED}{USER_UNRESERVED}%]"
PASSWORD_CHARS: Final = rf"[{UNRESERVED}&=+$,%]"
PARAM_CHARS: Final = rf"[{UNRESERVED}\[\]/:&+$%]"
HNV_CHARS: Final = rf"[{UNRESERVED}\[\]/?:+$%]"
SIP_URI_RE: Final = re.compile(
    r"([Ss][Ii][Pp](?:[Ss])?):"
    rf"(?:({USER_CHARS}+)(?::({PASSWORD_CHARS}*))?@)?"
    rf"({HOST})(?::({PORT}))?"
    rf"((?:;{PARAM_CHARS}+(?:={PARAM_CHARS}+)?)*)"
    rf"(?:\?({HNV_CHARS}+={HNV_CHARS}*(?:&{HNV_CHARS}+={HNV_CHARS}*)*))?"
)
BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
# absoluteURI (RFC 3261 §25.1 / RFC 3986): scheme ":" then opaque URI characters, no whitespace or <>".
ABSOLUTE_URI_RE: Final = re.compile(rf"(?P<scheme>{SCHEME}):(?P<opaque>[^\s<>\"\x00-\x1f\x7f]+)")

# --- tel URI (RFC 3966 §3) ------------------------------------------------------------------------------
VISUAL_SEPARATOR: Final = r"\-.()"
# "at least one digit among digits and separators", written with a lookahead so it stays linear-time.
TEL_GLOBAL: Final = rf"\+(?=[0-9{VISUAL_SEPARATOR}]*[0-9])[0-9{VISUAL_SEPARATOR}]++"
TEL_LOCAL: Final = rf"(?=[0-9A-Fa-f*#{VISUAL_SEPARATOR}]*[0-9A-Fa-f*#])[0-9A-Fa-f*#{VISUAL_SEPARATOR}]++"
TEL_URI_RE: Final = re.compile(
    rf"(?P<scheme>[Tt][Ee][Ll]):(?P<number>{TEL_GLOBAL}|{TEL_LOCAL})(?P<params>(?:;{URI_PARAM})*)"
)

# --- start lines (RFC 3261 §7.1, §7.2) ---------------------------------------------------------------
SIP_VERSION: Final = r"[Ss][Ii][Pp]/(?P<version>\d+\.\d+)"
REQUEST_LINE_RE: Final = re.compile(rf"(?P<method>{TOKEN}) (?P<uri>[^\s\x00-\x1f\x7f]+) {SIP_VERSION}")
STATUS_LINE_RE: Final = re.compile(rf"{SIP_VERSION} (?P<status>\d+)(?: (?P<reason>[^\r\n]*))?")

# --- header fields (RFC 3261 §7.3) -----------------------------------------------------------------------
# Greedy value that cannot end in WSP, so only trailing whitespace is ever backtracked over.
HEADER_LINE_RE: Final = re.compile(rf"({TOKEN}){SWS}:{SWS}((?:[^\r\n]*[^\r\n \t])?){SWS}")
# The whole header block at once (MULTILINE): one match per line; the caller checks none was skipped.
HEADER_LINES_RE: Final = re.compile(rf"^({TOKEN}){SWS}:{SWS}((?:[^\r\n]*[^\r\n \t])?){SWS}\r?$", re.MULTILINE)
FOLD_RE: Final = re.compile(r"\r\n(?=[ \t])")

GEN_VALUE: Final = rf"(?:{TOKEN}|{IPV6REFERENCE}|{QUOTED_STRING})"
GENERIC_PARAM: Final = rf"{TOKEN}(?:{SWS}={SWS}{GEN_VALUE})?"
GENERIC_PARAM_RE: Final = re.compile(rf"{SWS};{SWS}(?P<name>{TOKEN})(?:{SWS}={SWS}(?P<value>{GEN_VALUE}))?")
PARAMS: Final = rf"(?:{SWS};{SWS}{GENERIC_PARAM})*"

# via-parm (§20.42): sent-protocol LWS sent-by *( SEMI via-params ); SLASH = SWS "/" SWS.
VIA_RE: Final = re.compile(
    rf"{SWS}({TOKEN}){SWS}/{SWS}({TOKEN}){SWS}/{SWS}({TOKEN})"
    rf"{LWS}({HOST})(?:{SWS}:{SWS}({PORT}))?({PARAMS}){SWS}"
)

# name-addr / addr-spec with header params (§20.10, §20.20, §20.39); an addr-spec without <> stops at
# ';', ',' and '?' so its ;params are header params (RFC 3261 §20).
DISPLAY_NAME: Final = rf"(?:{QUOTED_STRING}|{TOKEN}(?:{LWS}{TOKEN})*)"
NAME_ADDR_RE: Final = re.compile(
    rf"{SWS}(?:({DISPLAY_NAME})?{SWS}<([^<>\s]+)>|([^\s;,<>\"?]+))({PARAMS}){SWS}"
)
COMMA_RE: Final = re.compile(rf"{SWS},")

CALL_ID_RE: Final = re.compile(rf"{WORD}(?:@{WORD})?")
CSEQ_RE: Final = re.compile(rf"(?P<seq>\d+){LWS}(?P<method>{TOKEN})")
DIGITS_RE: Final = re.compile(r"\d+")
# Reason (RFC 3326): protocol *( SEMI reason-params ).
REASON_RE: Final = re.compile(rf"{SWS}(?P<protocol>{TOKEN})(?P<params>{PARAMS}){SWS}")
# warning-value (§20.43): warn-code SP warn-agent SP warn-text.
WARNING_RE: Final = re.compile(
    rf"{SWS}(?P<code>\d{{3}}) (?P<agent>(?:{HOST}(?::{PORT})?)|{TOKEN}) (?P<text>{QUOTED_STRING}){SWS}"
)
# Retry-After (§20.33): delta-seconds [ comment ] *( SEMI retry-param ).
RETRY_AFTER_RE: Final = re.compile(
    rf"(?P<seconds>\d+)(?:{SWS}(?P<comment>\((?:[^()\\]|\\.)*\)))?(?P<params>{PARAMS})"
)
# media-type (§20.15): m-type SLASH m-subtype *(SEMI m-parameter).
MEDIA_TYPE_RE: Final = re.compile(rf"(?P<type>{TOKEN}){SWS}/{SWS}(?P<subtype>{TOKEN})(?P<params>{PARAMS})")
TOKEN_RE: Final = re.compile(TOKEN)
