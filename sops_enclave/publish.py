"""``sops-enclave publish``: sops 3.11's ``publish`` command.

``publish [--yes] [--omit-extensions] [--recursive] FILE|DIR`` finds the first
``destination_rules`` entry of ``.sops.yaml`` whose ``path_regex`` matches the path as given
(an empty regex matches everything) and uploads there:

* ``s3_bucket``/``s3_prefix``: the SOPS file, with boto3 (the AWS variables, profiles and
  ``AWS_ENDPOINT_URL_S3`` as boto3 reads them);
* ``gcs_bucket``/``gcs_prefix``: the SOPS file, with google-cloud-storage (application default
  credentials, or ``STORAGE_EMULATOR_HOST``; ``pip install google-cloud-storage``);
* ``vault_path`` (+ ``vault_address``, ``vault_kv_mount_name`` default ``secret/``,
  ``vault_kv_version`` 1 or 2, default 2): the *decrypted* top-level keys, over Vault's HTTP
  API with ``VAULT_ADDR`` and ``VAULT_TOKEN`` (else ``~/.vault-token``), ``VAULT_NAMESPACE``,
  ``VAULT_CACERT``, ``VAULT_SKIP_VERIFY``. A KV secret that already holds the same data is
  left alone (no new version), as sops does.

A ``recreation_rule`` with keys makes S3/GCS uploads re-encrypt the file first with a new data
key for those keys (only the rule's suffix settings carry over, as in sops), and the key-group
changes are listed on stdout. Without ``--yes`` every upload is confirmed on stdin.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sops_enclave.errors import SopsError

__all__ = ["parser", "handle", "Destination", "destination_for"]


def parser(cls) -> argparse.ArgumentParser:
    p = cls(prog="sops-enclave publish", description="Publish a SOPS file (or, with "
            "--recursive, every file under a directory) to the destination of its "
            ".sops.yaml destination_rules: S3, GCS (the encrypted file, re-encrypted for a "
            "recreation_rule's keys) or Vault KV (the decrypted values).")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before each upload")
    p.add_argument("--omit-extensions", action="store_true", help="drop the file extension "
                   "in the destination path")
    p.add_argument("--recursive", action="store_true", help="publish every file under DIR "
                   "(destination paths relative to DIR)")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("--decryption-order", help="key types to try first")
    p.add_argument("--keyservice", action="append", default=[], help="also use this key "
                   "service (tcp://host:port or unix:///path)")
    p.add_argument("--enable-local-keyservice", action="store_true", default=None,
                   help="use local keys too (default true; --enable-local-keyservice=false)")
    p.add_argument("files", nargs="*", metavar="FILE|DIR")
    return p


# ------------------------------------------------------------------ destinations

class Destination:
    """Where a rule publishes; ``path(name)`` is what the confirmation prompt shows."""

    encrypted = True

    def path(self, name: str) -> str:
        raise NotImplementedError

    def upload(self, data: bytes, name: str, env: dict[str, str]) -> None:
        raise NotImplementedError

    def upload_unencrypted(self, data: dict, name: str, env: dict[str, str]) -> None:
        raise NotImplementedError


class S3Destination(Destination):
    def __init__(self, bucket: str, prefix: str):
        self.bucket, self.prefix = bucket, prefix

    def path(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def upload(self, data: bytes, name: str, env: dict[str, str]) -> None:
        import boto3
        import botocore.exceptions

        try:
            boto3.client("s3").put_object(Bucket=self.bucket, Key=self.prefix + name,
                                          Body=data)
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            raise SopsError(f"operation error S3: PutObject, {err.get('Code', '')}: "
                            f"{err.get('Message', '')}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise SopsError(f"operation error S3: PutObject, {e}") from None


class GCSDestination(Destination):
    def __init__(self, bucket: str, prefix: str):
        self.bucket, self.prefix = bucket, prefix

    def path(self, name: str) -> str:
        return f"gcs://{self.bucket}/{self.prefix}{name}"

    def upload(self, data: bytes, name: str, env: dict[str, str]) -> None:
        try:
            from google.cloud import storage  # type: ignore[import-not-found]
        except ImportError:
            raise SopsError("publishing to GCS needs google-cloud-storage "
                            "(pip install 'sops-enclave[gcs]')") from None
        from google.api_core import exceptions as gexc  # type: ignore[import-not-found]

        try:
            client = storage.Client()
            client.bucket(self.bucket).blob(self.prefix + name).upload_from_string(data)
        except gexc.GoogleAPIError as e:
            raise SopsError(f"googleapi: {e}") from None


class VaultDestination(Destination):
    """sops' ``NewVaultDestination`` defaults: path and mount end in ``/``, mount
    ``secret/``, version 2 unless 1."""

    encrypted = False

    def __init__(self, address: str, path: str, mount: str, version: int):
        self.address = address
        self.vault_path = path if path.endswith("/") else path + "/"
        mount = mount or "secret/"
        self.mount = mount if mount.endswith("/") else mount + "/"
        self.version = version if version in (1, 2) else 2

    def _address(self, env: dict[str, str]) -> str:
        return self.address or env.get("VAULT_ADDR") or "https://127.0.0.1:8200"

    def secrets_path(self, name: str) -> str:
        if self.version == 1:
            return f"{self.mount}{self.vault_path}{name}"
        return f"{self.mount}data/{self.vault_path}{name}"

    def path(self, name: str) -> str:
        return f"{self._address(os.environ)}/v1/{self.secrets_path(name)}"

    def upload_unencrypted(self, data: dict, name: str, env: dict[str, str]) -> None:
        from sops_enclave.errors import logrus_line

        address = self._address(env).rstrip("/")
        path = self.secrets_path(name)
        try:
            existing = _vault_request("GET", address, path, None, env)
        except SopsError:
            existing = None
            print(logrus_line("PUBLISH", "warning", f"Cannot check if destination secret "
                              f"already exists in {path}. New version will be created even if "
                              "the data has not been changed."), file=sys.stderr)
        if existing is not None and _go_equal(data, (existing.get("data") or {}).get("data")):
            return  # sops: "Secret in ... is already up-to-date." (an info line, not shown)
        body = data if self.version == 1 else {"data": data}
        _vault_request("PUT", address, path, body, env)


def _go_equal(ours: Any, theirs: Any) -> bool:
    """``cmp.Equal(data, existing.Data["data"])``: the Vault client decodes numbers as
    ``json.Number``, which never equals the float64/int of the document."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and ours.keys() == theirs.keys() and all(
            _go_equal(v, theirs[k]) for k, v in ours.items())
    if isinstance(ours, list):
        return isinstance(theirs, list) and len(ours) == len(theirs) and all(
            _go_equal(a, b) for a, b in zip(ours, theirs))
    if isinstance(ours, (int, float)) and not isinstance(ours, bool):
        return False
    return type(ours) is type(theirs) and ours == theirs


def _vault_token(env: dict[str, str]) -> str:
    if env.get("VAULT_TOKEN"):
        return env["VAULT_TOKEN"]
    home = env.get("HOME") or os.path.expanduser("~")
    try:
        with open(os.path.join(home, ".vault-token"), encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def _vault_request(method: str, address: str, path: str, body: dict | None,
                   env: dict[str, str]) -> dict | None:
    """One Vault API call; None for a 404 on GET. Errors as the Go client words them."""
    import ssl
    import urllib.error
    import urllib.request

    url = f"{address}/v1/{path}"
    headers = {"X-Vault-Request": "true"}
    token = _vault_token(env)
    if token:
        headers["X-Vault-Token"] = token
    if env.get("VAULT_NAMESPACE"):
        headers["X-Vault-Namespace"] = env["VAULT_NAMESPACE"]
    data = None
    if body is not None:
        data = _go_json(body).encode()
        headers["Content-Type"] = "application/json"
    ctx = ssl.create_default_context(cafile=env.get("VAULT_CACERT") or None)
    if env.get("VAULT_SKIP_VERIFY", "").lower() in ("1", "t", "true"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60, context=ctx) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        if e.code == 404 and method == "GET":
            return None
        try:
            errors = json.loads(raw or b"{}").get("errors") or []
        except ValueError:
            errors = [raw.decode("utf-8", "replace")]
        listed = "".join(f"\n* {x}" for x in errors)
        raise SopsError(f"Error making API request.\n\nURL: {method} {url}\nCode: {e.code}. "
                        f"Errors:\n{listed}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SopsError(f'{method.capitalize()} "{url}": {reason}') from None
    return json.loads(raw) if raw.strip() else {}


def _go_json(v: Any) -> str:
    """``json.Marshal`` of the document map: keys sorted, Go's number formatting."""
    from sops_enclave.goformat import format_json_float

    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_go_json(x)}"
                              for k, x in sorted(v.items())) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_go_json(x) for x in v) + "]"
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_json_float(v)
    return json.dumps(v, ensure_ascii=False)


# ------------------------------------------------------------------ the rule

class _Rule:
    def __init__(self, dest: Destination | None, key_groups: list, shamir: int,
                 crypt_rule: tuple[str, str] | None, omit_extensions: bool):
        self.destination = dest
        self.key_groups = key_groups
        self.shamir_threshold = shamir
        self.crypt_rule = crypt_rule
        self.omit_extensions = omit_extensions


def destination_for(cfg, path_as_given: str) -> _Rule:
    """sops' ``parseDestinationRuleForFile``: the first rule whose regexp matches the path
    as given (a regexp that does not compile matches nothing), its destination, and its
    ``recreation_rule`` resolved as a creation rule."""
    from sops_enclave import config as cfgmod
    from sops_enclave import goregex

    chosen = None
    for r in cfg.destination_rules or []:
        rx = r.get("path_regex", "")
        if rx == "":
            chosen = r
            break
        try:
            if goregex.compile_go(rx).search(goregex.go_text(path_as_given)):
                chosen = r
                break
        except (goregex.GoRegexError, goregex.GoRegexUnsupported):
            continue
    if chosen is None:
        raise SopsError("error loading config: no matching destination found in config")
    kinds = [k for k in ("s3_bucket", "gcs_bucket", "vault_path") if chosen.get(k)]
    if len(kinds) > 1:
        raise SopsError("error loading config: more than one destinations were found in a "
                        "single destination rule, you can only use one per rule")
    dest: Destination | None = None
    if chosen.get("s3_bucket"):
        dest = S3Destination(chosen["s3_bucket"], chosen.get("s3_prefix", ""))
    elif chosen.get("gcs_bucket"):
        dest = GCSDestination(chosen["gcs_bucket"], chosen.get("gcs_prefix", ""))
    elif chosen.get("vault_path"):
        dest = VaultDestination(chosen.get("vault_address", ""), chosen["vault_path"],
                                chosen.get("vault_kv_mount_name", ""),
                                chosen.get("vault_kv_version", 0))
    recreation = dict(chosen.get("recreation_rule") or {})
    recreation["path_regex"] = ""
    rule = cfgmod.Config(path=cfg.path, creation_rules=[recreation], destination_rules=None,
                         stores=cfg.stores).creation_rule_for(cfg.path)
    assert rule is not None
    return _Rule(dest, rule.key_groups, rule.shamir_threshold, rule.crypt_rule,
                 bool(chosen.get("omit_extensions")))


# ------------------------------------------------------------------ the command

def _as_map(branches) -> dict:
    """``sops.EmitAsMap``: every document's top-level keys (comments dropped)."""
    from sops_enclave.tree import Branch, Comment, Timestamp

    def value(v: Any) -> Any:
        if isinstance(v, Branch):
            return {k: value(x) for k, x in v if not isinstance(k, Comment)}
        if isinstance(v, list):
            return [{"Value": x.value} if isinstance(x, Comment) else value(x) for x in v]
        if isinstance(v, Timestamp):
            return v.text
        return v

    out: dict = {}
    for b in branches:
        for k, v in b:
            if not isinstance(k, Comment):
                out[str(k)] = value(v)
    return out


def _confirm(abs_path: str, where: str) -> bool:
    from sops_enclave.commands import scanln

    answer = ""
    while answer not in ("y", "n"):
        sys.stdout.write(f"uploading {abs_path} to {where} ? (y/n): ")
        sys.stdout.flush()
        answer = scanln()
    return answer == "y"


def _publish_one(ctx, cfg, given: str, root: str | None) -> None:
    from sops_enclave import SOPS_FORMAT_VERSION, api
    from sops_enclave.cmdline import entry_from_spec
    from sops_enclave.commands import print_group_diffs
    from sops_enclave.fileio import read_input
    from sops_enclave.formats import resolve_format
    from sops_enclave.keys.groups import protect_data_key
    from sops_enclave.metadata import Metadata
    from sops_enclave.walk import CryptRule

    abs_path = ctx.abs(given)
    rule = destination_for(cfg, given)
    if rule.destination is None:
        raise SopsError("no destination configured for this file")
    name = os.path.relpath(given, root) if root is not None else os.path.basename(abs_path)
    if ctx.get("omit_extensions") or rule.omit_extensions:
        ext = os.path.splitext(os.path.basename(abs_path))[1]
        if ext and name.endswith(ext):
            name = name[:-len(ext)]
    fmt = resolve_format(None, abs_path)
    data = read_input(abs_path)
    api.load_encrypted(data, fmt)  # it must be a SOPS file
    dest = rule.destination
    groups = [[entry_from_spec(s, ctx.env) for s in g] for g in rule.key_groups]
    payload: Any = data
    if not dest.encrypted:
        d = api.decrypt_document(data, fmt, services=ctx.services(),
                                 decryption_order=ctx.decryption_order())
        payload = _as_map(d.branches)
    elif groups and groups[0]:
        d = api.decrypt_document(data, fmt, services=ctx.services(),
                                 decryption_order=ctx.decryption_order())
        changed, listing = print_group_diffs(d.metadata.key_groups, groups)
        if changed:
            sys.stdout.write("The following changes will be made to the file's key groups:\n"
                             + listing)
            sys.stdout.flush()
        crypt = CryptRule()
        if rule.crypt_rule and rule.crypt_rule[0] in ("unencrypted_suffix", "encrypted_suffix"):
            crypt = CryptRule(*rule.crypt_rule)
        md = Metadata(key_groups=groups, version=SOPS_FORMAT_VERSION,
                      shamir_threshold=rule.shamir_threshold, crypt_rule=crypt)
        key = os.urandom(32)
        protect_data_key(md, key, ctx.services())
        enc = api.encrypt_branches(d.branches, md, key)
        payload = api.emit_encrypted(enc, md, fmt, ctx.store_config(cfg))
    if not ctx.get("yes") and not _confirm(abs_path, dest.path(name)):
        msg = f"Publication of {abs_path} canceled"
        if root is not None:
            print(msg)
            return
        raise SopsError(msg)
    if dest.encrypted:
        dest.upload(payload, name, ctx.env)
    else:
        dest.upload_unencrypted(payload, name, ctx.env)


def _walk(top: str, absolute) -> list[str]:
    """``filepath.Walk`` order: lexical, depth first; the files only, as paths under ``top``
    as given (``absolute`` resolves one against the working directory)."""
    out: list[str] = []

    def visit(p: str) -> None:
        a = absolute(p)
        if os.path.isdir(a) and not os.path.islink(a):
            for n in sorted(os.listdir(a)):
                visit(os.path.join(p, n))
        else:
            out.append(p)

    visit(top)
    return out


def handle(ctx) -> int:
    from sops_enclave import config as cfgmod
    from sops_enclave.errors import LoggedFatal, go_errno_text

    from sops_enclave.cmdline import config_and_files

    config_path, files = config_and_files(ctx)
    if len(files) > 1:
        from sops_enclave.cmdline import warn

        warn("More than one positional argument provided. Only the first one will be used!")
    given = files[0]
    try:
        os.stat(ctx.abs(given))
    except OSError as e:
        raise SopsError(f"stat {given}: {go_errno_text(e)}") from None
    recursive = bool(ctx.get("recursive"))
    if os.path.isdir(ctx.abs(given)) and not recursive:
        raise LoggedFatal("can't operate on a directory without --recursive flag.")
    ctx.decryption_order()
    try:
        with open(ctx.abs(config_path), "rb") as f:
            cfg = cfgmod.load_config(f.read(), config_path)
    except OSError as e:
        raise SopsError(f"could not read config file: open {config_path}: "
                        f"{go_errno_text(e)}") from None
    targets = _walk(given, ctx.abs) if os.path.isdir(ctx.abs(given)) else [given]
    for t in targets:
        _publish_one(ctx, cfg, t, given if recursive else None)
    return 0
