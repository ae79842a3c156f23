"""Bundles: a policy set as one signed, verifiable file, in OPA's bundle layout.

A bundle is a gzipped tar holding the policy set's ``.policy`` files at its root, a
``.manifest`` and a ``.signatures.json``:

* ``.manifest`` is canonical JSON (sorted keys, no spaces)::

      {"metadata":{"policy_engine":{"files":[{"hash":"<hex>","name":"a.policy"}],
       "format":1,"serial":1764585600}},"revision":"<revision>","roots":[""]}

* ``.signatures.json`` is ``{"signatures":["<JWS>"]}`` with one compact JWS whose protected
  header is ``{"alg":"ES256","kid":"<key id>"}`` and whose payload is
  ``{"files":[{"algorithm":"SHA-256","hash":"<hex>","name":"<file>"},...],"keyid":"<key id>"}``
  listing every member but ``.signatures.json`` itself (``.manifest`` included): the shape
  OPA's ``opa sign`` writes and ``opa run --verification-key`` checks.

Members are sorted, regular files only, owner 0:0, mode 0644, time 0; the gzip header has
no name and time 0. An unsigned bundle is byte-for-byte reproducible; an ES256 signature
uses a fresh random nonce, so only the signature differs between two signed builds (RS256
signatures are deterministic).

Verification works on the bytes in memory, and what it returns (:class:`Bundle`) is the
texts that were verified: nothing is extracted to disk. Signing and verifying need the
``cryptography`` package (``pip install 'policy_engine[bundles]'``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError, UsageError

__all__ = [
    "ALGORITHMS",
    "Bundle",
    "Keyring",
    "MAX_BUNDLE_BYTES",
    "MAX_UNPACKED_BYTES",
    "build_bundle",
    "generate_key_pair",
    "is_bundle",
    "load_keyring",
    "read_bundle",
    "signing_key",
]

MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
#: Algorithms that keys may be pinned to (all verified by OPA as well).
ALGORITHMS = ("ES256", "RS256")
MAX_BUNDLE_BYTES = 16 << 20
MAX_UNPACKED_BYTES = 64 << 20
MAX_MEMBERS = 10_000
_EXTRA = "`cryptography` is needed to sign and verify bundles: install `policy_engine[bundles]`"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise UsageError(_EXTRA) from None
    return serialization


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle: its policy texts by file name, revision, serial and signer."""

    files: Mapping[str, str]
    revision: str
    serial: int
    key_id: str | None
    digest: str


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    key: Any


class Keyring:
    """Public keys by key id, each pinned to one algorithm."""

    def __init__(self, keys: Mapping[str, tuple[str, Any]]) -> None:
        self._keys = {kid: _Key(alg, key) for kid, (alg, key) in keys.items()}

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The known key ids, sorted."""
        return tuple(sorted(self._keys))

    def get(self, kid: str) -> tuple[str, Any] | None:
        """``(algorithm, public key)`` of ``kid``, or None."""
        key = self._keys.get(kid)
        return (key.algorithm, key.key) if key is not None else None


def _algorithm_of(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if key.curve.name != "secp256r1":
            raise BundleError(f"EC keys must be on P-256 for ES256, found `{key.curve.name}`")
        return "ES256"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if key.key_size < 2048:
            raise BundleError(f"RSA keys must have at least 2048 bits, found {key.key_size}")
        return "RS256"
    raise BundleError(f"unsupported key type `{type(key).__name__}`", "use an ES256 (P-256) or RS256 key")


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Public keys from a ``NAME.pub`` PEM file or a directory of them; the key id is ``NAME``
    and the algorithm is the key's own (ES256 for P-256, RS256 for RSA)."""
    serialization = _crypto()
    source = Path(path)
    files = sorted(source.glob("*.pub")) if source.is_dir() else [source]
    if not files:
        raise UsageError(f"no `*.pub` keys in `{source}`")
    keys: dict[str, tuple[str, Any]] = {}
    for file in files:
        try:
            key = serialization.load_pem_public_key(file.read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read public key `{file}`: {exc.strerror or exc}") from None
        except ValueError:
            raise UsageError(f"`{file}` is not a PEM public key") from None
        keys[file.name.removesuffix(".pub").removesuffix(".pem")] = (_algorithm_of(key), key)
    return Keyring(keys)


def generate_key_pair(name: str | os.PathLike[str], *, algorithm: str = "ES256",
                      passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` (PKCS#8 PEM, mode 0600, never overwritten) and ``NAME.pub``."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm `{algorithm}`", )
    private: Any = (ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256"
                    else rsa.generate_private_key(public_exponent=65537, key_size=3072))
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    key_path, pub_path = Path(f"{os.fspath(name)}.key"), Path(f"{os.fspath(name)}.pub")
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise UsageError(f"`{path}` exists; keys are never overwritten")
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pub_pem)
    except OSError as exc:
        raise UsageError(f"cannot write key pair `{name}`: {exc.strerror or exc}") from None
    return key_path, pub_path


def signing_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> tuple[str, str, Any]:
    """``(key id, algorithm, private key)`` from a ``NAME.key`` PEM file."""
    serialization = _crypto()
    file = Path(path)
    try:
        key = serialization.load_pem_private_key(file.read_bytes(), password=passphrase)
    except OSError as exc:
        raise UsageError(f"cannot read signing key `{file}`: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot load signing key `{file}`: {exc}") from None
    return file.name.removesuffix(".key").removesuffix(".pem"), _algorithm_of(key), key


# JWS ----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise BundleError("the signature is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BundleError("the signature is not base64url") from None


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sign(payload: bytes, kid: str, algorithm: str, key: Any) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    header = _b64(_canonical({"alg": algorithm, "kid": kid}))
    signing_input = f"{header}.{_b64(payload)}".encode("ascii")
    if algorithm == "ES256":
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode('ascii')}.{_b64(signature)}"


def _verify_jws(token: str, keyring: Keyring) -> tuple[str, Any]:
    """The key id and decoded payload of a valid compact JWS; raises :class:`BundleError`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise BundleError("the signature is not a compact JWS (three dot-separated parts)")
    header = _json(_unb64(parts[0]), "the signature's header")
    if not isinstance(header, dict):
        raise BundleError("the signature's header is not a JSON object")
    alg = header.get("alg")
    if alg == "none" or alg is None:
        raise BundleError("unsigned JWS (`alg: none`) refused", "bundles must be signed with a key in the keyring")
    if isinstance(alg, str) and alg.startswith("HS"):
        raise BundleError(f"HMAC signature (`{alg}`) refused where public keys are configured")
    if set(header) - {"alg", "kid", "typ"}:
        raise BundleError("the signature's header has unknown fields: "
                          + ", ".join(f"`{k}`" for k in sorted(set(header) - {"alg", "kid", "typ"})))
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise BundleError("the signature names no key id (`kid`)")
    found = keyring.get(kid)
    if found is None:
        raise BundleError(f"unknown key id `{kid}`",
                          "known: " + (", ".join(f"`{k}`" for k in keyring.key_ids) or "none"))
    pinned, key = found
    if alg != pinned:
        raise BundleError(f"key `{kid}` is pinned to `{pinned}`, the signature uses `{alg}`")
    signature = _unb64(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    try:
        if pinned == "ES256":
            if len(signature) != 64:
                raise InvalidSignature
            der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                             int.from_bytes(signature[32:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise BundleError(f"bad signature: it does not verify with key `{kid}`") from None
    payload = _json(_unb64(parts[1]), "the signature's payload")
    if not isinstance(payload, dict):
        raise BundleError("the signature's payload is not a JSON object")
    if payload.get("keyid", kid) != kid:
        raise BundleError(f"the payload's `keyid` `{payload.get('keyid')}` is not the header's `{kid}`")
    return kid, payload


def _json(raw: bytes, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise BundleError(f"{what} repeats the field `{key}`")
            result[key] = value
        return result

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError(f"{what} is not valid JSON") from None


# Building -----------------------------------------------------------------------------------


def _tar(members: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(members[name]))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def build_bundle(files: Mapping[str, str], *, revision: str = "", serial: int | None = None,
                 key: tuple[str, str, Any] | None = None) -> bytes:
    """The bytes of a bundle of ``files`` (``{file name: policy text}``), signed with ``key``
    (from :func:`signing_key`) when given. ``serial`` defaults to the build time."""
    members = {name: text.encode("utf-8") for name, text in files.items()}
    for name in members:
        if _canonical_name(name) != name or "/" in name or not name.endswith(".policy"):
            raise UsageError(f"bundle member `{name}` must be a plain `.policy` file name")
    listed = [{"hash": hashlib.sha256(data).hexdigest(), "name": name} for name, data in sorted(members.items())]
    manifest = {
        "revision": revision,
        "roots": [""],
        "metadata": {"policy_engine": {"format": 1, "serial": int(time.time()) if serial is None else serial,
                                       "files": listed}},
    }
    members[MANIFEST] = _canonical(manifest)
    if key is not None:
        kid, algorithm, private = key
        payload = {"files": [{"algorithm": "SHA-256", "hash": hashlib.sha256(data).hexdigest(), "name": name}
                             for name, data in sorted(members.items())], "keyid": kid}
        members[SIGNATURES] = _canonical({"signatures": [_sign(_canonical(payload), kid, algorithm, private)]})
    return _tar(members)


# Reading and verifying ----------------------------------------------------------------------


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a regular file that starts like a gzip stream (see
    :func:`policy_engine.policyset.is_bundle_file`, which reads it)."""
    from .policyset import is_bundle_file

    return is_bundle_file(path)


def _canonical_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _gunzip(data: bytes, limit: int) -> bytes:
    # Streamed with a cap on the output: a decompression bomb stops at `limit` bytes.
    inflater = zlib.decompressobj(wbits=31)
    out = bytearray()
    chunk = data
    try:
        while chunk:
            out += inflater.decompress(chunk, limit + 1 - len(out))
            if len(out) > limit:
                raise BundleError(f"the bundle unpacks to more than {limit} bytes",
                                  "a policy set is small: this looks like a decompression bomb")
            chunk = inflater.unconsumed_tail
        if not inflater.eof or inflater.unused_data:
            raise BundleError("the bundle is not one complete gzip stream")
    except zlib.error as exc:
        raise BundleError(f"the bundle is not gzip data: {exc}") from None
    return bytes(out)


def _members(data: bytes, max_bytes: int, max_unpacked: int) -> dict[str, bytes]:
    if len(data) > max_bytes:
        raise BundleError(f"the bundle is {len(data)} bytes, over the limit of {max_bytes}")
    raw = _gunzip(data, max_unpacked)
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for count, info in enumerate(tar):
                if count >= MAX_MEMBERS:
                    raise BundleError(f"the bundle has more than {MAX_MEMBERS} members")
                name = info.name
                if name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name:
                    raise BundleError(f"member `{name}` is outside the bundle's root")
                if info.isdir():
                    continue
                if not info.isreg():
                    kind = ("link" if info.issym() or info.islnk() else "device" if info.ischr() or info.isblk()
                            else "special file")
                    raise BundleError(f"member `{name}` is a {kind}; bundles hold regular files only")
                if _canonical_name(name) != name:
                    raise BundleError(f"member `{name}` is not spelled canonically as `{_canonical_name(name)}`")
                if name in members:
                    raise BundleError(f"member `{name}` appears twice")
                handle = tar.extractfile(info)
                if handle is None:
                    raise BundleError(f"member `{name}` cannot be read")
                members[name] = handle.read()
    except tarfile.TarError as exc:
        raise BundleError(f"the bundle is not a valid tar archive: {exc}") from None
    return members


def read_bundle(
    data: bytes,
    keyring: Keyring | None = None,
    *,
    state_file: str | os.PathLike[str] | None = None,
    require_signature: bool | None = None,
    max_bytes: int = MAX_BUNDLE_BYTES,
    max_unpacked: int = MAX_UNPACKED_BYTES,
) -> Bundle:
    """Verify and read a bundle from its bytes; raises :class:`BundleError` on any refusal.

    With a ``keyring`` the bundle must carry exactly one valid signature by one of its keys
    listing every member with its SHA-256 digest (``require_signature`` defaults to whether a
    keyring is given). With ``state_file``, a serial lower than the last accepted one is
    refused as a rollback, and an accepted serial is written there.
    """
    if require_signature is None:
        require_signature = keyring is not None
    members = _members(data, max_bytes, max_unpacked)
    signatures = members.pop(SIGNATURES, None)
    kid: str | None = None
    if require_signature:
        if keyring is None:
            raise UsageError("a signed bundle needs a keyring to verify it")
        if signatures is None:
            raise BundleError(f"the bundle is not signed (no `{SIGNATURES}`)",
                              "sign it with `policy-engine bundle build --signing-key`")
        kid = _check_signature(signatures, members, keyring)
    if MANIFEST not in members:
        raise BundleError(f"the bundle has no `{MANIFEST}`")
    manifest = _json(members.pop(MANIFEST), f"`{MANIFEST}`")
    meta = manifest.get("metadata", {}).get("policy_engine", {}) if isinstance(manifest, dict) else {}
    serial = meta.get("serial") if isinstance(meta, dict) else None
    revision = manifest.get("revision", "") if isinstance(manifest, dict) else ""
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0 or not isinstance(revision, str):
        raise BundleError(f"`{MANIFEST}` has no valid `revision` and `metadata.policy_engine.serial`")
    files: dict[str, str] = {}
    for name, content in sorted(members.items()):
        if "/" in name or not name.endswith(".policy"):
            raise BundleError(f"unexpected member `{name}`", "a bundle holds `.policy` files at its root")
        try:
            files[name] = content.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            raise BundleError(f"member `{name}` is not UTF-8 text (byte {exc.start})") from None
    if not files:
        raise BundleError("the bundle holds no `.policy` files")
    if state_file is not None:
        _check_serial(Path(state_file), serial)
    return Bundle(files, revision, serial, kid, hashlib.sha256(data).hexdigest())


def _check_signature(raw: bytes, members: Mapping[str, bytes], keyring: Keyring) -> str:
    document = _json(raw, f"`{SIGNATURES}`")
    tokens = document.get("signatures") if isinstance(document, dict) else None
    if not isinstance(tokens, list) or not tokens:
        raise BundleError(f"`{SIGNATURES}` holds no signature")
    if len(tokens) != 1:
        raise BundleError(f"`{SIGNATURES}` holds {len(tokens)} signatures; exactly one is accepted")
    kid, payload = _verify_jws(tokens[0], keyring)
    listed = payload.get("files")
    if not isinstance(listed, list):
        raise BundleError("the signature's payload lists no `files`")
    seen: dict[str, str] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("hash"), str):
            raise BundleError("a `files` entry of the signature has no `name` and `hash`")
        name = entry["name"]
        canonical = _canonical_name(name)
        if canonical in seen:
            raise BundleError(f"file `{canonical}` is listed twice in the signature"
                              + (f" (as `{seen[canonical]}` and `{name}`)" if seen[canonical] != name else ""))
        seen[canonical] = name
        if entry.get("algorithm", "SHA-256") != "SHA-256":
            raise BundleError(f"file `{name}` is hashed with `{entry.get('algorithm')}`; only SHA-256 is accepted")
        if canonical not in members:
            raise BundleError(f"file `{name}` is listed in the signature but missing from the bundle")
        if hashlib.sha256(members[canonical]).hexdigest() != entry["hash"].lower():
            raise BundleError(f"digest mismatch for `{canonical}`: its content is not what was signed")
    for name in members:
        if name not in seen:
            raise BundleError(f"file `{name}` is not listed in the signature")
    return kid


def _check_serial(path: Path, serial: int) -> None:
    last = last_serial(path)
    if last is not None and serial < last:
        raise BundleError(f"serial {serial} is older than the last accepted serial {last} (rollback refused)",
                          "publish a bundle built later, or remove the state file to reset it on purpose")
    record_serial(path, serial)


def record_serial(path: Path, serial: int) -> None:
    """Record ``serial`` as the last accepted one in the state file ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps({"serial": serial}) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise BundleError(f"cannot record the accepted serial in `{path}`: {exc.strerror or exc}") from None


def last_serial(path: Path) -> int | None:
    """The last accepted serial recorded in ``path`` (None when there is none)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read the serial state file `{path}`: {exc}") from None
    serial = data.get("serial") if isinstance(data, dict) else None
    if not isinstance(serial, int):
        raise BundleError(f"the serial state file `{path}` holds no serial")
    return serial
