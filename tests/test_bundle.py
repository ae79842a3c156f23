"""Bundles: build, sign, verify, and every refusal of verification with its own test."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import stat
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from policy_engine import bundle as B
from policy_engine.cli.main import main
from policy_engine.engine import Engine, read_policy_sources
from policy_engine.errors import BundleError, UsageError

ROOT = Path(__file__).parent.parent
POLICY = "allow plugin * to hook:register\ndeny plugin * to file:* on \"/etc/**\"\n"
FILES = {"a.policy": POLICY, "b.policy": 'allow plugin * to config:read on "x.*"\n'}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    B.generate_key_pair(directory / "site")
    B.generate_key_pair(directory / "other")
    B.generate_key_pair(directory / "rsa", algorithm="RS256")
    return directory


def key(keys: Path, name: str = "site") -> tuple[str, str, Any]:
    return B.signing_key(keys / f"{name}.key")


def ring(keys: Path, *names: str) -> B.Keyring:
    found: dict[str, tuple[str, Any]] = {}
    for name in names or ("site",):
        kr = B.load_keyring(keys / f"{name}.pub")
        entry = kr.get(name)
        assert entry is not None
        found[name] = entry
    return B.Keyring(found)


def tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def manifest(serial: int = 1) -> bytes:
    return B._canonical({"revision": "r", "roots": [""], "metadata": {"policy_engine": {"format": 1, "serial": serial}}})


def signed_members(members: dict[str, bytes], k: tuple[str, str, Any], *,
                   listed: list[dict[str, str]] | None = None, tokens: int = 1) -> list[tuple[tarfile.TarInfo, bytes]]:
    """A bundle's entries with a signature over ``listed`` (default: every member)."""
    if listed is None:
        listed = [{"algorithm": "SHA-256", "hash": hashlib.sha256(d).hexdigest(), "name": n}
                  for n, d in sorted(members.items())]
    token = B._sign(B._canonical({"files": listed, "keyid": k[0]}), k[0], k[1], k[2])
    entries = [reg(n, d) for n, d in sorted(members.items())]
    entries.append(reg(B.SIGNATURES, B._canonical({"signatures": [token] * tokens})))
    return entries


def refused(data: bytes, keyring: B.Keyring | None, match: str, **options: Any) -> None:
    with pytest.raises(BundleError, match=match):
        B.read_bundle(data, keyring, **options)


# Building ---------------------------------------------------------------------------------


def test_round_trip(keys: Path) -> None:
    data = B.build_bundle(FILES, revision="abc123", serial=7, key=key(keys))
    bundle = B.read_bundle(data, ring(keys))
    assert dict(bundle.files) == FILES
    assert (bundle.revision, bundle.serial, bundle.key_id) == ("abc123", 7, "site")
    assert bundle.digest == hashlib.sha256(data).hexdigest()


def test_rs256_round_trip_is_fully_reproducible(keys: Path) -> None:
    first = B.build_bundle(FILES, serial=1, key=key(keys, "rsa"))
    assert first == B.build_bundle(FILES, serial=1, key=key(keys, "rsa"))
    assert B.read_bundle(first, ring(keys, "rsa")).key_id == "rsa"


def test_layout_is_opa_shaped_and_reproducible(keys: Path) -> None:
    assert B.build_bundle(FILES, revision="r", serial=3) == B.build_bundle(FILES, revision="r", serial=3)
    data = B.build_bundle(FILES, revision="r", serial=3, key=key(keys))
    assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == [".manifest", ".signatures.json", "a.policy", "b.policy"]
        assert {(i.mtime, i.uid, i.gid, i.mode, i.uname) for i in infos} == {(0, 0, 0, 0o644, "")}
        man = json.loads(tar.extractfile(".manifest").read())  # type: ignore[union-attr]
        sigs = json.loads(tar.extractfile(".signatures.json").read())  # type: ignore[union-attr]
    assert man["revision"] == "r" and man["metadata"]["policy_engine"]["serial"] == 3
    header, payload, _ = sigs["signatures"][0].split(".")
    decode: Callable[[str], Any] = lambda part: json.loads(B._unb64(part))  # noqa: E731
    assert decode(header) == {"alg": "ES256", "kid": "site"}
    body = decode(payload)
    assert body["keyid"] == "site"
    assert [f["name"] for f in body["files"]] == [".manifest", "a.policy", "b.policy"]
    assert {f["algorithm"] for f in body["files"]} == {"SHA-256"}


def test_serial_defaults_to_the_build_time() -> None:
    import time

    before = int(time.time())
    assert B.read_bundle(B.build_bundle(FILES)).serial >= before


def test_load_dir_and_bundle_give_the_same_set() -> None:
    sources = read_policy_sources(ROOT / "policies")
    bundle = B.read_bundle(B.build_bundle({Path(p).name: t for p, t in sources.items()}, serial=1))
    assert sorted(bundle.files.values()) == sorted(sources.values())
    assert [r.ref.text for r in Engine.from_source(dict(bundle.files)).policy.rules] == \
        [r.ref.text for r in Engine.from_source(sources).policy.rules]


# Refusals -----------------------------------------------------------------------------------


def test_bad_signature(keys: Path) -> None:
    data = B.build_bundle(FILES, serial=1, key=key(keys))
    members = B._members(data, B.MAX_BUNDLE_BYTES, B.MAX_UNPACKED_BYTES)
    token = json.loads(members[B.SIGNATURES])["signatures"][0]
    head, body, sig = token.split(".")
    forged = f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    members[B.SIGNATURES] = B._canonical({"signatures": [forged]})
    refused(tar_gz([reg(n, d) for n, d in members.items()]), ring(keys), "bad signature")


def test_signature_by_another_key_with_a_known_kid(keys: Path) -> None:
    kid, alg, other = key(keys, "other")
    entries = signed_members({B.MANIFEST: manifest(), "a.policy": b"x"}, ("site", alg, other))
    refused(tar_gz(entries), ring(keys), "bad signature")


def test_missing_signature(keys: Path) -> None:
    refused(B.build_bundle(FILES, serial=1), ring(keys), "not signed")


def test_duplicated_signature(keys: Path) -> None:
    entries = signed_members({B.MANIFEST: manifest(), "a.policy": b"x"}, key(keys), tokens=2)
    refused(tar_gz(entries), ring(keys), "exactly one")


def _token_with(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> bytes:
    token = f"{B._b64(B._canonical(header))}.{B._b64(B._canonical(payload))}.{B._b64(signature)}"
    return B._canonical({"signatures": [token]})


@pytest.mark.parametrize(("header", "match"), [
    ({"alg": "none", "kid": "site"}, "alg: none"),
    ({"kid": "site"}, "alg: none"),
    ({"alg": "HS256", "kid": "site"}, "HMAC"),
    ({"alg": "ES256", "kid": "nobody"}, "unknown key id `nobody`"),
    ({"alg": "ES256"}, "no key id"),
    ({"alg": "RS256", "kid": "site"}, "pinned to `ES256`"),
])
def test_header_refusals(keys: Path, header: dict[str, Any], match: str) -> None:
    members = {B.MANIFEST: manifest(), "a.policy": b"x"}
    listed = [{"algorithm": "SHA-256", "hash": hashlib.sha256(d).hexdigest(), "name": n} for n, d in members.items()]
    entries = [reg(n, d) for n, d in members.items()]
    entries.append(reg(B.SIGNATURES, _token_with(header, {"files": listed}, b"x" * 64)))
    refused(tar_gz(entries), ring(keys), match)


def test_unknown_key_id_signed_by_a_real_key(keys: Path) -> None:
    entries = signed_members({B.MANIFEST: manifest(), "a.policy": b"x"}, key(keys, "other"))
    refused(tar_gz(entries), ring(keys), "unknown key id `other`")


def test_keyring_rotation_accepts_either_key(keys: Path) -> None:
    both = ring(keys, "site", "other")
    for name in ("site", "other"):
        assert B.read_bundle(B.build_bundle(FILES, serial=1, key=key(keys, name)), both).key_id == name


def test_file_not_listed(keys: Path) -> None:
    members = {B.MANIFEST: manifest(), "a.policy": b"x", "b.policy": b"y"}
    listed = [{"algorithm": "SHA-256", "hash": hashlib.sha256(members[n]).hexdigest(), "name": n}
              for n in (B.MANIFEST, "a.policy")]
    refused(tar_gz(signed_members(members, key(keys), listed=listed)), ring(keys), "`b.policy` is not listed")


@pytest.mark.parametrize("spelling", ["a.policy", "./a.policy", ".//a.policy", "./././a.policy"])
def test_file_listed_twice(keys: Path, spelling: str) -> None:
    members = {B.MANIFEST: manifest(), "a.policy": b"x"}
    listed = [{"algorithm": "SHA-256", "hash": hashlib.sha256(d).hexdigest(), "name": n} for n, d in members.items()]
    listed.append({"algorithm": "SHA-256", "hash": hashlib.sha256(b"x").hexdigest(), "name": spelling})
    refused(tar_gz(signed_members(members, key(keys), listed=listed)), ring(keys), "listed twice")


def test_listed_file_missing(keys: Path) -> None:
    members = {B.MANIFEST: manifest(), "a.policy": b"x"}
    listed = [{"algorithm": "SHA-256", "hash": hashlib.sha256(d).hexdigest(), "name": n} for n, d in members.items()]
    listed.append({"algorithm": "SHA-256", "hash": "0" * 64, "name": "gone.policy"})
    refused(tar_gz(signed_members(members, key(keys), listed=listed)), ring(keys), "missing from the bundle")


def test_digest_mismatch(keys: Path) -> None:
    members = {B.MANIFEST: manifest(), "a.policy": b"deny plugin * to file:*\n"}
    listed = [{"algorithm": "SHA-256", "hash": hashlib.sha256(d).hexdigest(), "name": n} for n, d in members.items()]
    members["a.policy"] = b"allow plugin * to file:*\n"
    refused(tar_gz(signed_members(members, key(keys), listed=listed)), ring(keys), "digest mismatch for `a.policy`")


def test_other_hash_algorithm(keys: Path) -> None:
    members = {B.MANIFEST: manifest(), "a.policy": b"x"}
    listed = [{"algorithm": "MD5", "hash": hashlib.md5(d).hexdigest(), "name": n} for n, d in members.items()]
    refused(tar_gz(signed_members(members, key(keys), listed=listed)), ring(keys), "only SHA-256")


def test_duplicate_members(keys: Path) -> None:
    entries = [reg(B.MANIFEST, manifest()), reg("a.policy", b"x"), reg("a.policy", b"y")]
    refused(tar_gz(entries), None, "appears twice")


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, None


@pytest.mark.parametrize(("entry", "match"), [
    (reg("../a.policy", b"x"), "outside the bundle's root"),
    (reg("sub/../../a.policy", b"x"), "outside the bundle's root"),
    (reg("/etc/a.policy", b"x"), "outside the bundle's root"),
    (reg("sub//a.policy", b"x"), "not spelled canonically"),
    (reg("./a.policy", b"x"), "not spelled canonically"),
    (_special("a.policy", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_special("a.policy", tarfile.LNKTYPE, "b.policy"), "is a link"),
    (_special("a.policy", tarfile.CHRTYPE), "is a device"),
    (_special("a.policy", tarfile.BLKTYPE), "is a device"),
    (_special("a.policy", tarfile.FIFOTYPE), "special file"),
])
def test_members_outside_the_root_or_not_regular(entry: tuple[tarfile.TarInfo, bytes | None], match: str) -> None:
    refused(tar_gz([reg(B.MANIFEST, manifest()), entry]), None, match)


def test_oversize_bundle() -> None:
    data = B.build_bundle(FILES, serial=1)
    refused(data, None, "over the limit", max_bytes=len(data) - 1)


def test_decompression_bomb_is_cut_while_streaming() -> None:
    bomb = gzip.compress(b"\0" * (8 << 20), mtime=0)
    assert len(bomb) < 64 << 10
    refused(bomb, None, "unpacks to more than", max_unpacked=1 << 20)


def test_not_gzip_and_trailing_garbage() -> None:
    refused(b"not a bundle", None, "not gzip")
    refused(B.build_bundle(FILES, serial=1) + b"x", None, "one complete gzip stream")


def test_serial_rollback_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "serial.json"
    B.read_bundle(B.build_bundle(FILES, serial=5), state_file=state)
    B.read_bundle(B.build_bundle(FILES, serial=5), state_file=state)  # a restart on the same one
    refused(B.build_bundle(FILES, serial=4), None, "rollback", state_file=state)
    B.read_bundle(B.build_bundle(FILES, serial=6), state_file=state)
    assert B.last_serial(state) == 6


def test_unexpected_member_and_no_policy() -> None:
    refused(tar_gz([reg(B.MANIFEST, manifest()), reg("data.json", b"{}")]), None, "unexpected member")
    refused(tar_gz([reg(B.MANIFEST, manifest())]), None, "no `.policy` files")
    refused(tar_gz([reg("a.policy", b"x")]), None, "no `.manifest`")


# CLI ----------------------------------------------------------------------------------------


def test_cli_keygen_build_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bundle", "keygen", "-o", "site"]) == 0
    assert stat.S_IMODE((tmp_path / "site.key").stat().st_mode) == 0o600
    assert main(["bundle", "keygen", "-o", "site"]) == 2  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "a.policy").write_text(POLICY)
    assert main(["bundle", "build", "p", "-o", "b.tar.gz", "--signing-key", "site.key",
                 "--revision", "r1", "--serial", "10"]) == 0
    assert main(["bundle", "verify", "b.tar.gz", "--public-key", "site.pub", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert out == {"valid": True, "revision": "r1", "serial": 10, "key_id": "site", "files": ["a.policy"],
                   "sha256": hashlib.sha256((tmp_path / "b.tar.gz").read_bytes()).hexdigest()}
    assert main(["bundle", "build", "p", "-o", "u.tar.gz"]) == 0
    assert main(["bundle", "verify", "u.tar.gz", "--public-key", "site.pub"]) == 1
    assert "not signed" in capsys.readouterr().err


def test_cli_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PASS", "correct horse")
    assert main(["bundle", "keygen", "-o", "k", "--passphrase-env", "PASS"]) == 0
    assert b"ENCRYPTED" in (tmp_path / "k.key").read_bytes()
    with pytest.raises(UsageError):
        B.signing_key(tmp_path / "k.key")
    assert B.signing_key(tmp_path / "k.key", b"correct horse")[0] == "k"


def test_cli_build_refuses_a_set_that_does_not_compile_or_fails_its_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.policy").write_text("allow plugin * to file:raed\n")
    assert main(["bundle", "build", "p", "-o", "b"]) == 2
    assert "a.policy:1:" in capsys.readouterr().err
    (tmp_path / "p" / "a.policy").write_text(POLICY)
    (tmp_path / "p" / "a.test.yaml").write_text("cases: [{plugin: nobody, action: hook:register, expect: allow}]\n")
    assert main(["bundle", "build", "p", "-o", "b"]) == 2
    assert "1 policy test case failed" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_without_cryptography_the_command_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)
    assert main(["bundle", "keygen", "-o", "k"]) == 2
    assert "policy_engine[bundles]" in capsys.readouterr().err


# Loading --------------------------------------------------------------------------------------


def test_engine_loads_a_bundle_like_its_directory(tmp_path: Path, keys: Path) -> None:
    sources = read_policy_sources(ROOT / "policies")
    path = tmp_path / "b.tar.gz"
    path.write_bytes(B.build_bundle({Path(p).name: t for p, t in sources.items()}, serial=1, key=key(keys)))
    plugins = ROOT / "examples" / "plugins"
    from_dir = Engine.load(ROOT / "policies", plugins=plugins, variables={"data_dir": "/d"})
    from_bundle = Engine.load(path, plugins=plugins, variables={"data_dir": "/d"}, public_key=keys / "site.pub")
    assert from_bundle.plugins == from_dir.plugins
    for request in [("rogue", "file:read", "/etc/passwd"), ("summarizer", "hook:register", "document.saved"),
                    ("report-builder", "file:write", "/d/report-builder/x")]:
        assert from_bundle.decide(*request).reason is from_dir.decide(*request).reason


def test_engine_refuses_an_unsigned_bundle_once_a_key_is_configured(tmp_path: Path, keys: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(B.build_bundle(FILES, serial=1))
    assert Engine.load(path).policy.rules  # no key configured: a local bundle loads
    with pytest.raises(BundleError, match="not signed"):
        Engine.load(path, public_key=keys / "site.pub")
    with pytest.raises(UsageError, match="verifies bundles only"):
        Engine.load(ROOT / "policies", public_key=keys / "site.pub")


def test_cli_decides_from_a_signed_bundle(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(B.build_bundle(FILES, serial=1, key=key(keys)))
    plugins = str(ROOT / "examples" / "plugins")
    assert main(["decide", "rogue", "file:read", "/etc/passwd", "--policy", str(path),
                 "--public-key", str(keys / "site.pub"), "--plugins", plugins]) == 1
    assert "a.policy:2:1" in capsys.readouterr().out
    assert main(["decide", "rogue", "file:read", "/etc/passwd", "--policy", str(path),
                 "--public-key", str(keys / "other.pub"), "--plugins", plugins]) == 2
    assert "unknown key id `site`" in capsys.readouterr().err


# Properties -----------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_any_bytes_are_a_bundle_error_never_a_crash(data: bytes) -> None:
    try:
        B.read_bundle(data)
    except BundleError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_flipped_byte_never_yields_other_verified_content(keys: Path, data: st.DataObject) -> None:
    signed = B.build_bundle(FILES, serial=1, key=key(keys, "rsa"))  # RS256: the same bytes every time
    index = data.draw(st.integers(0, len(signed) - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = bytearray(signed)
    mutated[index] ^= 1 << bit
    try:
        bundle = B.read_bundle(bytes(mutated), ring(keys, "rsa"))
    except BundleError:
        return
    assert dict(bundle.files) == FILES and bundle.serial == 1  # e.g. a gzip header flag byte
