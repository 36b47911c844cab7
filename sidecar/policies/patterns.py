"""The built-in secret patterns, each with the core the raw-text gate searches.

A pattern has two forms. ``mask`` is searched in decoded strings (Python's
``re`` with ``re.ASCII``: ``\\d`` is 0-9 and case folding is ASCII, so the
mask never matches where the gate's RE2 does not). ``core`` is searched in
the raw JSON text by the gate: it must match inside every match of ``mask``,
over characters JSON never escapes (no ``"``, ``\\`` or control character),
so that a secret in any decoded string, at any level of JSON held in a
string, is also a match of the core in the raw line. A leading boundary is
part of ``mask`` only (the character before a secret may be escaped).

A mask with a group named ``secret`` masks that group only (the label of an
assignment stays readable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# A token starts here: not inside a longer word, or right after a written
# escape (``\\n`` in code or in JSON text held in a string: its ``n`` is no word).
_LEAD = r"(?:(?<![A-Za-z0-9_-])|(?<=\\[nrtbf]))"


def luhn(number: str) -> bool:
    """The Luhn check of a card number; spaces and dashes are ignored."""
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    mask: str  # searched in decoded strings
    core: str  # searched in the raw JSON text: inside every match of ``mask``
    valid: Callable[[str], bool] | None = None


_ASSIGNED = r"password|passwd|pwd|secret|token|api[_-]?key"
_PEM = r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----"

BUILTINS: tuple[Builtin, ...] = (
    Builtin("anthropic", _LEAD + r"sk-ant-[A-Za-z0-9_-]{20,}", r"sk-ant-[A-Za-z0-9_-]{20,}"),
    Builtin("openai", _LEAD + r"sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_-]{0,300}\d)"
            r"[A-Za-z0-9_-]{20,}", r"sk-[A-Za-z0-9_-]{20,}"),
    Builtin("google_api_key", _LEAD + r"AIza[0-9A-Za-z_-]{35,}", r"AIza[0-9A-Za-z_-]{35,}"),
    Builtin("aws_access_key_id",
            r"(?:(?<![A-Za-z0-9])|(?<=\\[nrtbf]))(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
            r"(?:AKIA|ASIA)[A-Z0-9]{16}"),
    # A secret access key is 40 characters of base64 that look like many
    # other things: it is masked where it is named (in free text; as a JSON
    # key, BUILTIN_KEYS below).
    Builtin("aws_secret_access_key",
            r"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)"
            r"[\"' :=]{1,6}(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
            r"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)"),
    Builtin("azure_storage_key", r"AccountKey=[A-Za-z0-9+/]{40,}={0,2}",
            r"AccountKey=[A-Za-z0-9+/]{40,}"),
    Builtin("azure_sas_signature", r"(?<=[?&])sig=[A-Za-z0-9%+/]{20,}={0,2}",
            r"sig=[A-Za-z0-9%+/]{20,}"),
    Builtin("huggingface", _LEAD + r"hf_[A-Za-z0-9]{30,}", r"hf_[A-Za-z0-9]{30,}"),
    Builtin("github", _LEAD + r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})",
            r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}"),
    Builtin("slack", _LEAD + r"xox[abposr]-[A-Za-z0-9-]{10,}", r"xox[abposr]-[A-Za-z0-9-]{10,}"),
    Builtin("jwt", _LEAD + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    # From the header to the footer, or to the end of the string when the
    # footer is missing (a cut key is still a key).
    Builtin("private_key", _PEM + r"[\s\S]*?(?:-----END[A-Z ]{0,40}PRIVATE KEY-----|\Z)", _PEM),
    # A token has a digit somewhere ("the bearer of bad news" is prose).
    Builtin("bearer", r"(?i:bearer) +(?=[A-Za-z0-9._~+/-]{0,300}\d)[A-Za-z0-9._~+/-]{8,}=*",
            r"(?i:bearer) +[A-Za-z0-9._~+/-]{8,}"),
    # password=..., token = "...", "secret": "..." in free text (JSON held in
    # a string is scanned as JSON: its keys are checked by name).
    Builtin("assignment", r"(?<![A-Za-z0-9])(?i:" + _ASSIGNED + r")(?:[\"'] *: *| *= *)[\"']?"
            r"(?P<secret>[^\s\"'&;,)}\]]{3,})",
            r"(?i:" + _ASSIGNED + r")\\*[\"']? *[:=]"),
    # The local part is bounded (RFC 5321: 64), so a long word costs linear time.
    Builtin("email", r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*"
            r"\.[A-Za-z]{2,24}", r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"),
    # Card numbers by their issuers' first digits, 4-digit groups with one
    # kind of separator (or 4-6-5 for Amex), and the Luhn check. The core
    # keeps the leading boundary and the one separator (a digit or a dash
    # before it would be written as itself, or in a \u escape, which walks):
    # without them the digits of one UUID in forty passed the gate.
    Builtin("card", r"(?<![\d-])(?:[2-6]\d{3}([ -]?)\d{4}\1\d{4}\1\d{1,7}"
            r"|3[47]\d{2}([ -]?)\d{6}\2\d{5})(?!\d)",
            r"(?:^|[^0-9-])(?:[2-6][0-9]{3}(?:[0-9]{8}|-[0-9]{4}-[0-9]{4}| [0-9]{4} [0-9]{4})"
            r"|3[47][0-9]{2}(?:[0-9]{11}|-[0-9]{6}-[0-9]{5}| [0-9]{6} [0-9]{5}))", luhn),
)

# JSON keys whose value is a secret whatever it looks like, when the
# built-in patterns are on (on top of ``redaction.keys``).
BUILTIN_KEYS = ("aws_secret_access_key", "secret_access_key", "secretaccesskey",
                "private_key", "client_secret")
