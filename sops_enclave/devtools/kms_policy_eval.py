"""DEV STAND-IN, NOT AWS: the key-policy evaluator of the dev KMS (:mod:`.kms_attested`).

:func:`evaluate_key_policy` decides one request against one key policy document the way
KMS does for the parts it understands, and *fails closed* everywhere else: whatever it does
not understand can only turn the answer into "deny", never into "allow".

Decision. An applicable ``Deny`` statement wins (``Decision.explicit_deny``), then any
applicable ``Allow``, otherwise the request is denied (the caller may still be allowed by a
grant, which :mod:`.kms_attested` models; an explicit Deny beats grants too).

A statement applies when all of these hold:

* ``Action``/``NotAction``: IAM action patterns, ``*`` and ``?`` wildcards, case-insensitive.
* ``Principal``/``NotPrincipal`` (when a caller :class:`Principal` is given): ``"*"``,
  ``{"AWS": "*"}``, ``{"AWS": ARN or [ARNs]}`` where an account root
  (``arn:aws:iam::ACCOUNT:root`` or the bare 12-digit ``ACCOUNT``) stands for every principal
  of that account (the dev KMS models no IAM policies: every principal counts as allowed by
  its IAM policy, the way moto's default policy is meant) and a role or user ARN matches that
  principal exactly. ``Service``/``Federated``/``CanonicalUser`` principals never match an
  IAM caller. ``NotPrincipal`` in a Deny exempts the caller only when both its ARN and its
  account are listed (IAM evaluates the Deny for both); in an Allow any of the two excludes
  it. Anything else (wildcards inside an ARN, session ARNs, unknown keys) is not understood.
  Without a principal (``principal=None``, offline analysis) ``Principal`` is ignored: the
  caller counts as every principal the policy names.
* ``Resource``/``NotResource`` (when ``resource``, the key ARN, is given): ``"*"`` or ARN
  patterns compared component by component with ``*``/``?`` (as ``ArnLike``).
* ``Condition``: every ``operator: {key: values}`` entry holds (entries are AND-ed, the
  values of one entry OR-ed). Operators: ``StringEquals``, ``StringNotEquals``,
  ``StringEqualsIgnoreCase``, ``StringNotEqualsIgnoreCase``, ``StringLike``,
  ``StringNotLike``, ``ArnEquals``, ``ArnLike``, ``ArnNotEquals``, ``ArnNotLike``, ``Bool``
  (each also with ``IfExists``) and ``Null``; ``ForAnyValue:``/``ForAllValues:`` with the
  multivalued keys (``kms:EncryptionContextKeys``, ``kms:GrantOperations``) and only with
  them. A key missing from the request satisfies the negated operators and ``...IfExists``,
  fails the others; ``ForAllValues`` is true and ``ForAnyValue`` false on a missing key.
  Values containing policy variables (``${...}``) are not understood.

Condition keys come from a :class:`RequestContext`: lower-case key names mapped to their
values, ``None`` for a key known to be absent from this request, or several alternatives
when the dev KMS cannot tell which one real KMS would use (the entry must then give the
same answer for all of them, else it is not understood). A key the context does not know
is not understood. The attestation keys ``kms:RecipientAttestation:ImageSha384`` and
``...:PCR0`` .. ``PCR31`` are always known (absent without an attested ``Recipient``).
``kms:EncryptionContext:<key>`` compares the context key case-insensitively (KMS docs:
use ``kms:EncryptionContextKeys`` for a case-sensitive key); two request keys differing
only by case make it not understood.

Not understood means: an ``Allow`` statement does not apply, a ``Deny`` statement does.
A policy that is not a JSON object, has duplicate keys, or has a statement with an unknown
element or a malformed ``Effect``/``Action``/``Principal`` denies everything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Union

__all__ = ["Decision", "Principal", "RequestContext", "Uncertain", "UNKNOWN", "PolicyFormatError",
           "attestation_context", "encryption_context_values", "evaluate_key_policy",
           "parse_policy", "ATTESTATION_PREFIX", "MULTIVALUED_KEYS"]

ATTESTATION_PREFIX = "kms:recipientattestation:"
ATTESTATION_KEYS = frozenset([ATTESTATION_PREFIX + "imagesha384"] +
                             [f"{ATTESTATION_PREFIX}pcr{i}" for i in range(32)])
EC_PREFIX = "kms:encryptioncontext:"
MULTIVALUED_KEYS = frozenset({"kms:encryptioncontextkeys", "kms:grantoperations"})

_STATEMENT_ELEMENTS = frozenset({"Sid", "Effect", "Principal", "NotPrincipal", "Action",
                                 "NotAction", "Resource", "NotResource", "Condition"})
_POLICY_ELEMENTS = frozenset({"Version", "Id", "Statement"})
_ACCOUNT_RE = re.compile(r"\d{12}", re.ASCII)
_IAM_ARN_RE = re.compile(r"arn:(?P<partition>aws(?:-[a-z0-9]+)*):iam::(?P<account>\d{12}):"
                         r"(?:(?P<root>root)|(?:role|user)/[\w+=,.@/-]+)", re.ASCII)
_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals",
            "ArnNotLike"}
_POSITIVE = {"StringNotEquals": "StringEquals",
             "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
             "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals",
             "ArnNotLike": "ArnLike"}
_OPERATORS = {"StringEquals", "StringEqualsIgnoreCase", "StringLike", "ArnEquals", "ArnLike",
              "Bool"} | _NEGATED

Values = Union[tuple[str, ...], None]


class PolicyFormatError(ValueError):
    """A key policy the evaluator cannot read at all (it then denies everything)."""


@dataclass(frozen=True)
class Decision:
    """Outcome of :func:`evaluate_key_policy`; ``reason`` is for the error message.

    ``explicit_deny``: a Deny statement applied (nothing, not even a grant, can allow).
    """

    allowed: bool
    reason: str
    explicit_deny: bool = False


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: an IAM role or user ARN (``arn:aws:iam::ACCOUNT:role/x``)."""

    arn: str

    def __post_init__(self) -> None:
        m = _IAM_ARN_RE.fullmatch(self.arn) if isinstance(self.arn, str) else None
        if m is None or m["root"]:
            raise ValueError(f"principal {self.arn!r} is not an IAM role or user ARN "
                             "(arn:aws:iam::123456789012:role/NAME)")

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]

    @property
    def partition(self) -> str:
        return self.arn.split(":")[1]

    @property
    def account_root(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:root"


class Uncertain(tuple):
    """Alternative values of one condition key when real KMS's choice is not known."""


#: A context value that is present but not understood (e.g. colliding context keys).
UNKNOWN = object()


@dataclass(frozen=True)
class RequestContext:
    """Condition-key values of one request (names lower-case, see the module docstring).

    ``values[name]``: a tuple of strings (one element for single-valued keys), ``None`` for
    known-absent, or an :class:`Uncertain` of such alternatives. ``ec_known``: the
    ``kms:EncryptionContext:*`` family is known (keys not in ``values`` are absent).
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    ec_known: bool = False

    def lookup(self, name: str) -> list[Values] | None:
        """The alternatives for ``name`` (lower-case), or None when not known."""
        if name in self.values:
            v = self.values[name]
            if v is UNKNOWN:
                return None
            return list(v) if isinstance(v, Uncertain) else [v]
        if name in ATTESTATION_KEYS:
            return [None]
        if name.startswith(EC_PREFIX) and self.ec_known:
            return [None]
        return None

    @classmethod
    def from_mapping(cls, context: Mapping[str, Any]) -> RequestContext:
        """A legacy ``{lower-case key: value}`` mapping (e.g. :func:`attestation_context`)."""
        values: dict[str, Any] = {}
        for k, v in context.items():
            if isinstance(v, str):
                values[k.lower()] = (v,)
            elif v is None or v is UNKNOWN or isinstance(v, Uncertain):
                values[k.lower()] = v
            else:
                values[k.lower()] = tuple(v)
        return cls(values)


def attestation_context(doc: Any) -> dict[str, str]:
    """Condition-key values (lower-case names) a verified attestation document provides.

    ``kms:recipientattestation:imagesha384`` is PCR0; ``...:pcr<n>`` each PCR in the
    document; all lower-case hex. Empty without a document.
    """
    if doc is None:
        return {}
    ctx = {f"{ATTESTATION_PREFIX}pcr{i}": v.hex() for i, v in doc.pcrs.items()}
    if 0 in doc.pcrs:
        ctx[ATTESTATION_PREFIX + "imagesha384"] = doc.pcrs[0].hex()
    return ctx


def encryption_context_values(ec: Mapping[str, str] | None) -> dict[str, Any]:
    """``kms:encryptioncontext:<k>`` and ``kms:encryptioncontextkeys`` for a request's
    encryption context (``None``/empty: absent). Keys that collide case-insensitively are
    left unknown."""
    out: dict[str, Any] = {}
    ec = dict(ec or {})
    out["kms:encryptioncontextkeys"] = tuple(ec) if ec else None
    seen: dict[str, int] = {}
    for k in ec:
        seen[k.lower()] = seen.get(k.lower(), 0) + 1
    for k, v in ec.items():
        out[EC_PREFIX + k.lower()] = (v,) if seen[k.lower()] == 1 else UNKNOWN
    return out


# --- parsing ---------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PolicyFormatError(f"duplicate key {k!r} in the key policy")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise PolicyFormatError(f"{name} is not valid JSON")


def parse_policy(policy: Mapping[str, Any] | str) -> list[dict[str, Any]]:
    """The statements of a key policy, or :class:`PolicyFormatError` when it cannot be
    read (not JSON, duplicate keys, unknown elements, malformed statements)."""
    if isinstance(policy, (str, bytes)):
        try:
            policy = json.loads(policy, object_pairs_hook=_no_duplicates,
                                parse_constant=_reject_constant)
        except PolicyFormatError:
            raise
        except ValueError:
            raise PolicyFormatError("the key policy is not valid JSON") from None
    if not isinstance(policy, Mapping):
        raise PolicyFormatError("the key policy is not a JSON object")
    unknown = set(policy) - _POLICY_ELEMENTS
    if unknown:
        raise PolicyFormatError(f"the key policy has unknown elements {sorted(unknown)}")
    statements = policy.get("Statement")
    statements = [statements] if isinstance(statements, dict) else statements
    if not isinstance(statements, list):
        raise PolicyFormatError("the key policy's Statement is not a list")
    for index, st in enumerate(statements):
        _check_statement(index, st)
    return statements


def _strings(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(v, str) for v in items)


def _check_statement(index: int, st: Any) -> None:
    where = f"key policy statement {index}"
    if not isinstance(st, dict):
        raise PolicyFormatError(f"{where} is not an object")
    unknown = set(st) - _STATEMENT_ELEMENTS
    if unknown:
        raise PolicyFormatError(f"{where} has unknown elements {sorted(unknown)}")
    if st.get("Effect") not in ("Allow", "Deny"):
        raise PolicyFormatError(f"{where} has no Effect Allow or Deny")
    if ("Action" in st) == ("NotAction" in st):
        raise PolicyFormatError(f"{where} needs exactly one of Action and NotAction")
    if not _strings(st.get("Action", st.get("NotAction"))):
        raise PolicyFormatError(f"{where}: Action must be a string or a list of strings")
    if "Principal" in st and "NotPrincipal" in st:
        raise PolicyFormatError(f"{where} has both Principal and NotPrincipal")
    if "Resource" in st and "NotResource" in st:
        raise PolicyFormatError(f"{where} has both Resource and NotResource")
    for name in ("Resource", "NotResource"):
        if name in st and not _strings(st[name]):
            raise PolicyFormatError(f"{where}: {name} must be a string or a list of strings")
    if "Sid" in st and not isinstance(st["Sid"], str):
        raise PolicyFormatError(f"{where}: Sid must be a string")


# --- matching --------------------------------------------------------------------------

@lru_cache(maxsize=1024)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM wildcards: ``*`` any run of characters, ``?`` one character, nothing else."""
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _like(value: str, pattern: str, ignore_case: bool = False) -> bool:
    return _glob(pattern, ignore_case).fullmatch(value) is not None


def _arn_like(value: str, pattern: str) -> bool:
    vs, ps = value.split(":", 5), pattern.split(":", 5)
    if len(vs) != 6 or len(ps) != 6:
        return False
    return all(_like(v, p) for v, p in zip(vs, ps))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _action_matches(patterns: Any, action: str) -> bool:
    return any(isinstance(p, str) and _like(action, p, ignore_case=True)
               for p in _as_list(patterns))


def _principal_value(value: Any, caller: Principal) -> tuple[bool, bool] | None:
    """(matches the caller's ARN, matches the caller's account) for one ``AWS`` value, or
    None when not understood."""
    if not isinstance(value, str):
        return None
    if value == "*":
        return True, True
    if _ACCOUNT_RE.fullmatch(value):
        return False, value == caller.account
    if "*" in value or "?" in value:
        return None           # KMS refuses wildcards inside principal ARNs
    m = _IAM_ARN_RE.fullmatch(value)
    if m is None:
        return None           # assumed-role sessions, federated users, typos
    if m["root"]:
        return False, value == caller.account_root
    return value == caller.arn, False


def _principal_matches(spec: Any, caller: Principal, negated: bool,
                       effect: str) -> bool | None:
    """Whether ``Principal`` (``negated``: ``NotPrincipal``) makes the statement apply."""
    if spec == "*":
        hits = [(True, True)]
    elif isinstance(spec, dict) and spec:
        hits = []
        for kind, values in spec.items():
            if kind in ("Service", "Federated", "CanonicalUser"):
                if not _strings(values):
                    return None
                continue          # never this IAM caller
            if kind != "AWS":
                return None
            items = _as_list(values)
            if not items:
                return None
            for v in items:
                hit = _principal_value(v, caller)
                if hit is None:
                    return None
                hits.append(hit)
    else:
        return None
    arn_listed = any(h[0] for h in hits)
    account_listed = any(h[1] for h in hits)
    if not negated:
        # An account root stands for every principal of the account (IAM allows all here).
        return arn_listed or account_listed
    if effect == "Deny":
        return not (arn_listed and account_listed)
    return not (arn_listed or account_listed)


def _resource_matches(patterns: Any, resource: str) -> bool:
    return any(p == "*" or _arn_like(resource, p) for p in _as_list(patterns))


# --- conditions ------------------------------------------------------------------------

def _condition_values(raw: Any, base: str) -> list[str] | None:
    items = _as_list(raw)
    if not items:
        return None
    out = []
    for v in items:
        if isinstance(v, bool) and base in ("Bool", "Null"):
            v = "true" if v else "false"
        if not isinstance(v, str) or "${" in v:
            return None
        out.append(v)
    return out


def _match(base: str, actual: str, wanted: str) -> bool | None:
    if base == "StringEquals":
        return actual == wanted
    if base == "StringEqualsIgnoreCase":
        return actual.lower() == wanted.lower()
    if base == "StringLike":
        return _like(actual, wanted)
    if base in ("ArnEquals", "ArnLike"):
        return _arn_like(actual, wanted)
    if base == "Bool":
        if wanted.lower() not in ("true", "false"):
            return None
        return actual.lower() == wanted.lower()
    return None


def _entry(operator: str, key: Any, raw: Any, context: RequestContext) -> bool | None:
    """One ``operator: {key: values}`` entry: True/False, or None when not understood."""
    if not isinstance(operator, str) or not isinstance(key, str):
        return None
    qualifier, _, base = operator.rpartition(":")
    if qualifier not in ("", "ForAnyValue", "ForAllValues"):
        return None
    name = key.lower()
    alternatives = context.lookup(name)
    if alternatives is None:
        return None
    results = {_entry_one(qualifier, base, name, raw, values) for values in alternatives}
    if None in results or len(results) != 1:
        return None
    return results.pop()


def _entry_one(qualifier: str, base: str, name: str, raw: Any,
               values: Values) -> bool | None:
    multi = name in MULTIVALUED_KEYS
    present = bool(values)
    if base == "Null":
        wanted = _condition_values(raw, "Null")
        if qualifier or wanted is None or any(w.lower() not in ("true", "false")
                                              for w in wanted):
            return None
        return any((w.lower() == "true") == (not present) for w in wanted)
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base[:-len("IfExists")]
    if base not in _OPERATORS or multi != bool(qualifier):
        return None
    wanted = _condition_values(raw, base)
    if wanted is None:
        return None
    negated = base in _NEGATED
    positive = _POSITIVE.get(base, base)
    if not present:
        if if_exists:
            return True
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return negated
    assert values is not None
    per_value = []
    for actual in values:
        hits = [_match(positive, actual, w) for w in wanted]
        if None in hits:
            return None
        hit = any(hits)
        per_value.append(not hit if negated else hit)
    if qualifier == "ForAllValues":
        return all(per_value)
    if qualifier == "ForAnyValue":
        return any(per_value)
    if len(values) != 1:
        return None
    return per_value[0]


def _conditions_hold(conditions: Any, context: RequestContext, effect: str,
                     notes: list[str]) -> bool:
    if conditions is None:
        return True
    fail_closed = effect == "Deny"     # not understood: an Allow does not apply, a Deny does
    if not isinstance(conditions, dict) or not conditions:
        notes.append("Condition is not an object (fails closed)")
        return fail_closed
    for operator, block in conditions.items():
        if not isinstance(block, dict) or not block:
            notes.append(f"condition {operator!r} is not an object (fails closed)")
            if not fail_closed:
                return False
            continue
        for key, values in block.items():
            result = _entry(operator, key, values, context)
            if result is None:
                notes.append(f"unsupported condition {operator} on {key} (fails closed)")
                result = fail_closed
            if not result:
                return False
    return True


# --- evaluation ------------------------------------------------------------------------

def evaluate_key_policy(policy: Mapping[str, Any] | str, action: str,
                        context: RequestContext | Mapping[str, Any],
                        *, principal: Principal | str | None = None,
                        resource: str | None = None) -> Decision:
    """Evaluate a key policy for ``action`` (``"kms:Decrypt"``) by ``principal`` on the key
    ``resource`` (its ARN) with the condition keys of ``context``.

    ``context`` is a :class:`RequestContext` or a plain mapping of lower-case keys to
    values (:func:`attestation_context`; other keys in it are taken as given, keys not in
    it are not understood, the attestation keys absent). ``principal=None`` ignores
    ``Principal``/``NotPrincipal`` and ``resource=None`` ignores ``Resource``/``NotResource``
    (offline analysis of a policy); the dev KMS always passes both.
    """
    if isinstance(principal, str):
        principal = Principal(principal)
    if not isinstance(context, RequestContext):
        context = RequestContext.from_mapping(context)
    try:
        statements = parse_policy(policy)
    except PolicyFormatError as e:
        return Decision(False, str(e))
    allowed_by: str | None = None
    notes: list[str] = []
    for index, st in enumerate(statements):
        effect = st["Effect"]
        label = f"statement {st.get('Sid', index)!r}"
        if "Action" in st:
            applies = _action_matches(st["Action"], action)
        else:
            applies = not _action_matches(st["NotAction"], action)
        if not applies:
            continue
        if principal is not None:
            if "Principal" in st or "NotPrincipal" in st:
                negated = "NotPrincipal" in st
                spec = st["NotPrincipal"] if negated else st["Principal"]
                hit = _principal_matches(spec, principal, negated, effect)
            else:
                hit = None        # KMS requires a principal in key policy statements
            if hit is None:
                notes.append(f"{label}: principal not understood (fails closed)")
                hit = effect == "Deny"
            if not hit:
                continue
        if resource is not None:
            if "Resource" in st:
                hit_r = _resource_matches(st["Resource"], resource)
            elif "NotResource" in st:
                hit_r = not _resource_matches(st["NotResource"], resource)
            else:
                hit_r = effect == "Deny"
            if not hit_r:
                continue
        if not _conditions_hold(st.get("Condition"), context, effect, notes):
            continue
        if effect == "Deny":
            return Decision(False, f"explicitly denied by key policy {label}", True)
        allowed_by = allowed_by or label
    if allowed_by is not None:
        return Decision(True, f"allowed by key policy {allowed_by}")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return Decision(False, f"no key policy statement allows {action} for this request{extra}")

