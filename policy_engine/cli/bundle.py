"""``policy-engine bundle keygen|build|verify``: signed bundles of a policy set.

Exit codes: 0 done (``verify``: the bundle is valid), 1 ``verify`` refused the bundle,
2 a usage error, or ``build`` refused a policy set that does not compile or fails its tests.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..bundle import build_bundle, generate_key_pair, load_keyring, read_bundle, signing_key
from ..engine import Engine, read_policy_sources
from ..errors import BundleError, UsageError
from ..policyset import read_bundle_bytes
from ..policytest import find_test_files, run_tests
from .conventions import exit_codes_epilog
from .options import EXIT_DENIED, EXIT_OK, print_json

__all__ = ["cmd_build", "cmd_keygen", "cmd_verify"]


def _passphrase(args: argparse.Namespace) -> bytes | None:
    name = getattr(args, "passphrase_env", None)
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise UsageError(f"environment variable `{name}` holds no passphrase")
    return value.encode("utf-8")


def cmd_keygen(args: argparse.Namespace) -> int:
    """``bundle keygen -o NAME``: write ``NAME.key`` (0600) and ``NAME.pub``."""
    key, pub = generate_key_pair(args.output, algorithm=args.algorithm, passphrase=_passphrase(args))
    print(f"wrote {key} (private, keep it secret) and {pub} (public, give it to hosts); key id `{Path(pub).stem}`")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    """``bundle build POLICY_DIR -o BUNDLE``: refuse a set that does not compile or whose
    tests fail, then write the bundle."""
    sources = read_policy_sources(args.policy_dir)
    Engine.from_source(sources)  # raises with file:line:col when the set does not compile
    if Path(args.policy_dir).is_dir() and find_test_files([args.policy_dir]):
        report = run_tests([args.policy_dir])
        if not report.ok:
            raise UsageError(f"{report.failed} policy test case{'s' if report.failed != 1 else ''} "
                             f"failed; run `policy-engine test {args.policy_dir}`")
    files: dict[str, str] = {}
    for path, text in sources.items():
        name = Path(path).name
        if name in files:
            raise UsageError(f"two policy files are named `{name}`")
        files[name] = text
    key = signing_key(args.signing_key, _passphrase(args)) if args.signing_key else None
    data = build_bundle(files, revision=args.revision or "", serial=args.serial, key=key)
    try:
        Path(args.output).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write `{args.output}`: {exc.strerror or exc}") from None
    signed = f", signed with key `{key[0]}`" if key else ", unsigned"
    print(f"wrote {args.output}: {len(files)} policy file{'s' if len(files) != 1 else ''}{signed}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """``bundle verify BUNDLE --public-key KEY``: exit 0 only for a valid, fully listed bundle."""
    keyring = load_keyring(args.public_key)
    try:
        data, _ = read_bundle_bytes(args.bundle)  # the one reader: a regular file, size-capped
    except BundleError as exc:
        raise UsageError(str(exc)) from None
    assert data is not None
    try:
        bundle = read_bundle(data, keyring, state_file=args.state)
    except BundleError as exc:
        if args.json:
            print_json({"valid": False, "error": exc.message, "hint": exc.hint})
        print(f"policy-engine: refused: {args.bundle}: {exc}", file=sys.stderr)
        return EXIT_DENIED
    if args.json:
        print_json({"valid": True, "revision": bundle.revision, "serial": bundle.serial,
                    "key_id": bundle.key_id, "files": sorted(bundle.files), "sha256": bundle.digest})
    else:
        print(f"{args.bundle}: valid, signed by `{bundle.key_id}`, revision `{bundle.revision}`, "
              f"serial {bundle.serial}, {len(bundle.files)} policy files")
    return EXIT_OK


def register_bundle(commands: Any) -> None:
    bundle = commands.add_parser(
        "bundle", help="build, sign and verify policy bundles",
        description="Signed bundles of a policy set, in OPA's bundle layout.",
        epilog=exit_codes_epilog(((0, "done"), (1, "`verify` refused the bundle"),
                                  (2, "usage or input error (also: `build` refused the set)"))))
    actions = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    keygen = actions.add_parser("keygen", help="write a key pair NAME.key and NAME.pub",
                                description="Write NAME.key (private, mode 0600, never overwritten) "
                                            "and NAME.pub (public).",
                                epilog=exit_codes_epilog(((0, "written"), (2, "usage or input error"))))
    keygen.add_argument("-o", "--output", required=True, metavar="NAME")
    keygen.add_argument("--algorithm", choices=("ES256", "RS256"), default="ES256")
    keygen.add_argument("--passphrase-env", metavar="VAR", help="encrypt the private key with $VAR")
    keygen.set_defaults(handler=cmd_keygen)
    build = actions.add_parser("build", help="build (and sign) a bundle of a policy directory",
                               description="Build a bundle of POLICY_DIR's .policy files. Refuses a set "
                                           "that does not compile or whose *.test.yaml cases fail. "
                                           "",
                               epilog=exit_codes_epilog(((0, "written"), (2, "usage or input error, or the set was refused"))))
    build.add_argument("policy_dir", metavar="POLICY_DIR")
    build.add_argument("-o", "--output", required=True, metavar="BUNDLE")
    build.add_argument("--revision", metavar="R", help="a revision label, such as a commit id")
    build.add_argument("--serial", type=int, metavar="N", help="the monotonic serial (default: the build time)")
    build.add_argument("--signing-key", metavar="KEY", help="a NAME.key file; the key id is NAME")
    build.add_argument("--passphrase-env", metavar="VAR", help="the signing key's passphrase is in $VAR")
    build.set_defaults(handler=cmd_build)
    verify = actions.add_parser("verify", help="verify a bundle's signature and digests",
                                description="Verify a bundle's signature, its file list and digests, "
                                            "and (with --state) its serial.",
                                epilog=exit_codes_epilog(((0, "valid"), (1, "refused"),
                                                          (2, "usage or input error"))))
    verify.add_argument("bundle", metavar="BUNDLE")
    verify.add_argument("--public-key", required=True, metavar="KEY",
                        help="a NAME.pub file or a directory of them (a keyring; key id NAME)")
    verify.add_argument("--state", metavar="FILE",
                        help="refuse a serial older than the one recorded here, and record this one")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=cmd_verify)

