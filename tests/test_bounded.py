"""The input caps: one table, documented in the README, enforced while reading."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine import Engine
from policy_engine.bounded import DEFAULT_LIMITS, InputLimits, is_limit_diagnostic, load_yaml
from policy_engine.errors import InputLimitError, PolicySyntaxError
from policy_engine.parser import parse_policy

ROOT = Path(__file__).resolve().parent.parent


def test_every_cap_is_in_the_readme_table_with_its_value() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- input-limits -->\n(.*?)<!-- /input-limits -->", readme, re.S)
    assert match is not None
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d,]+) \|", match.group(1), re.M))
    assert rows == {f.name: f"{getattr(DEFAULT_LIMITS, f.name):,}" for f in dataclasses.fields(InputLimits)}


def test_caps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="yaml_depth"):
        InputLimits(yaml_depth=0)


@pytest.mark.parametrize(("text", "cap"), [
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{n}: &{n} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, n in zip("abcdef", "bcdefg", strict=True)), "yaml_nodes"),
    ("x: " + "[" * 40 + "]" * 40 + "\n", "yaml_depth"),
    ("x: " + "9" * 41 + "\n", "number_digits"),
    ("x: |\n" + "  abcdefgh\n" * 3000, "scalar_chars"),
    ("".join(f"k{i}: 1\n" for i in range(1001)), "mapping_keys"),
    ("x: [" + "*a, " * 101 + "]\n", "yaml_aliases"),
    ("x: " + "y" * 9000 + "\n", "line_chars"),
])
def test_load_yaml_refuses_each_cap_with_a_position(text: str, cap: str) -> None:
    if cap == "yaml_aliases":
        text = "a: &a 1\n" + text
    with pytest.raises(InputLimitError) as info:
        load_yaml(text, name="m.yaml")
    (diagnostic,) = info.value.diagnostics
    assert is_limit_diagnostic(diagnostic)
    assert f"`{cap}`" in diagnostic.message
    assert diagnostic.span is not None and diagnostic.span.file == "m.yaml"
    if cap not in ("yaml_bytes",):
        assert diagnostic.span.line >= 1


def test_load_yaml_is_safe_load_within_the_caps() -> None:
    text = "a: &x [1, 2]\nb: *x\nc: {d: 2024-01-01, e: null}\n"
    assert load_yaml(text, name="m.yaml") == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: !!python/object:os.system x\n", name="m.yaml")


@settings(max_examples=50, deadline=None)
@given(st.recursive(st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(st.text(max_size=3), c, max_size=4), max_leaves=30))
def test_load_yaml_agrees_with_safe_load(data: object) -> None:
    text = yaml.safe_dump({"root": data})
    assert load_yaml(text, name="m.yaml") == yaml.safe_load(text)


def test_a_condition_at_the_depth_cap_parses_and_evaluates() -> None:
    depth = DEFAULT_LIMITS.condition_depth
    condition = "context.x" + " and context.x" * (depth - 1)  # depth-1 `and` levels + the test
    policy = f'allow plugin * to file:read on "/srv/**" when {condition}\n'
    engine = Engine.from_source(policy, [
        "name: p\nversion: 1.0.0\ntype: agent\nentry_point: p:P\npermissions:\n  - file:read /srv/**\n"])
    assert engine.decide("p", "file:read", "/srv/a", {"x": True}).allowed
    with pytest.raises(PolicySyntaxError, match="condition_depth"):
        parse_policy(policy.replace(" when ", " when context.x and "))


def test_a_manifest_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    from policy_engine.errors import ManifestError
    from policy_engine.manifest import load_manifest

    os.mkfifo(tmp_path / "plugin.yaml")  # opening it for reading would block forever
    with pytest.raises(ManifestError, match="named pipe"):
        load_manifest(tmp_path)


def test_a_manifest_over_the_size_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from policy_engine.errors import ManifestError
    from policy_engine.manifest import load_manifest

    with open(tmp_path / "plugin.yaml", "wb") as handle:
        handle.truncate(DEFAULT_LIMITS.yaml_bytes + 1)  # sparse: nothing to read if it tried
    with pytest.raises(ManifestError, match="`yaml_bytes`"):
        load_manifest(tmp_path)


def test_realpath_below_answers_as_realpath(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from policy_engine.bounded import realpath_below

    real = tmp_path / "real"
    (real / "plain").mkdir(parents=True)
    (real / "plain" / "plugin.yaml").write_text("a: 1\n")
    (real / "elsewhere").mkdir()
    (real / "elsewhere" / "plugin.yaml").write_text("a: 2\n")
    (real / "linked").symlink_to(real / "elsewhere")  # a plugin directory that is a link
    (real / "relative").symlink_to("elsewhere")
    (real / "file-link").mkdir()
    (real / "file-link" / "plugin.yaml").symlink_to(real / "plain" / "plugin.yaml")
    (real / "dangling").mkdir()
    (real / "dangling" / "plugin.yaml").symlink_to(tmp_path / "missing")
    (real / "chain").symlink_to(real / "linked")
    (real / "up").symlink_to("..")
    (tmp_path / "root-link").symlink_to(real)  # the plugins directory itself a link
    monkeypatch.chdir(tmp_path)
    children = [p.name for p in real.iterdir()] + ["absent"]
    for root in (str(real), str(tmp_path / "root-link"), "root-link", "real", "./real", "real/../real",
                 "root-link/up/real"):
        resolve = realpath_below(str(Path(root)))
        for child in children:
            for path in (Path(root) / child / "plugin.yaml", Path(root) / child, Path(root) / "plugin.yaml"):
                assert resolve(str(path)) == os.path.realpath(str(path)), (root, path)
        for other in (str(tmp_path / "real" / "plain" / "plugin.yaml"), "real2/x", f"{root}/./x", f"{root}//x",
                      f"{root}/up/plain"):
            assert resolve(other) == os.path.realpath(other), (root, other)
