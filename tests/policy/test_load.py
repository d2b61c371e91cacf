"""Loading policy files: valid files become the expected objects, bad ones located problems."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import pytest

from featureguard.errors import PolicyError
from featureguard.policy import (
    AuditSpec,
    FeatureSpec,
    Location,
    Policy,
    PolicySet,
    SAESpec,
    SteerSpec,
    SuppressSpec,
    load_policies,
    load_policies_text,
    validate_files,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "example.yaml"
NOWHERE = Location(file="<test>", line=None, column=None, key="")

# Every key of the format, with three policies so that suppress and steer are both used.
VALID = """\
version: 1
fail_mode: open
saes:
  res6:
    path: ../saes/demo-res6
    hook: blocks.6.hook_resid_post
  hub:
    path: hf://org/repo/sub/path
policies:
  - name: unsafe-code
    description: code that turns off a security check
    sae: res6
    features:
      - {index: 1234, label: disables TLS verification, weight: 1.0, max: 7.5}
    threshold: 3.0
    action: block
    scope: response
    window: 2
    message: "This reply was withheld: it contained unsafe code."
    severity: high
  - name: quiet
    sae: hub
    features: [{index: 7, weight: 2, max: 4}]
    threshold: 1
    action: suppress
    suppress: {method: clamp, times_max: -0.5, mode: always}
  - name: calm
    sae: res6
    features: [{index: 5}]
    threshold: 0.5
    action: steer
    steer: {value: 2.0}
audit:
  path: logs/audit.jsonl
  include_text: false
"""

# A small valid file; the malformed cases below each change some of its lines.
BASE = """\
version: 1                                  # 1
saes:                                       # 2
  res6:                                     # 3
    path: ../saes/demo-res6                 # 4
    hook: blocks.6.hook_resid_post          # 5
policies:                                   # 6
  - name: unsafe-code                       # 7
    sae: res6                               # 8
    features:                               # 9
      - {index: 1234, label: tls, max: 7.5} # 10
      - {index: 99, weight: 0.5, max: 2.0}  # 11
    threshold: 3.0                          # 12
    action: block                           # 13
  - name: calm                              # 14
    sae: res6                               # 15
    features: [{index: 5, max: 1.0}]        # 16
    threshold: 1.0                          # 17
    action: steer                           # 18
    steer: {times_max: -1.0}                # 19
"""
LINES = BASE.splitlines()


def _edit(line: int, new: str) -> str:
    """BASE with line `line` (1-based) replaced by the lines of `new`, at its indentation."""
    indent = LINES[line - 1][: len(LINES[line - 1]) - len(LINES[line - 1].lstrip())]
    return (
        "\n".join([*LINES[: line - 1], *(indent + x for x in new.split("\n")), *LINES[line:]])
        + "\n"
    )


def _head(last: int, *tail: str) -> str:
    """The first `last` lines of BASE followed by the lines `tail`."""
    return "\n".join([*LINES[:last], *tail]) + "\n"


class Case(NamedTuple):
    id: str
    text: str
    line: int
    key: str
    fragment: str


# id, file text; then the line, key path and message fragment of the problem expected.
# fmt: off
CASES = [
    Case("threshold-bool", _edit(12, "threshold: true"),
         12, "policies[0].threshold", "expected a number, got boolean true"),
    Case("threshold-string", _edit(12, "threshold: '3'"),
         12, "policies[0].threshold", "expected a number, got string '3'"),
    Case("threshold-nan", _edit(12, "threshold: .nan"),
         12, "policies[0].threshold", "expected a finite number, got number nan"),
    Case("threshold-inf", _edit(12, "threshold: -.inf"),
         12, "policies[0].threshold", "expected a finite number"),
    Case("threshold-overflow", _edit(12, "threshold: 1" + "0" * 400),
         12, "policies[0].threshold", "expected a finite number"),
    Case("weight-nan", _edit(11, "- {index: 99, weight: .nan, max: 2.0}"),
         11, "policies[0].features[1].weight", "expected a finite number"),
    Case("max-zero", _edit(10, "- {index: 1234, label: tls, max: 0}"),
         10, "policies[0].features[0].max", "expected a number > 0"),
    Case("index-negative", _edit(10, "- {index: -1, label: tls, max: 7.5}"),
         10, "policies[0].features[0].index", "expected an integer >= 0, got integer -1"),
    Case("index-float", _edit(10, "- {index: 12.5, label: tls, max: 7.5}"),
         10, "policies[0].features[0].index", "expected an integer, got number 12.5"),
    Case("index-whole-float", _edit(10, "- {index: 12.0, label: tls, max: 7.5}"),
         10, "policies[0].features[0].index", "expected an integer, got number 12.0"),
    Case("index-string", _edit(10, "- {index: '1234', label: tls}"),
         10, "policies[0].features[0].index", "expected an integer, got string '1234'"),
    Case("index-bool", _edit(10, "- {index: true, label: tls}"),
         10, "policies[0].features[0].index", "expected an integer, got boolean true"),
    Case("unknown-top-key", BASE + "failmode: open\n",
         20, "failmode", "unknown key (did you mean 'fail_mode'?)"),
    Case("unknown-sae-key", _edit(5, "hok: blocks.6.hook_resid_post"),
         5, "saes.res6.hok", "unknown key (did you mean 'hook'?)"),
    Case("unknown-policy-key", _edit(12, "thresold: 3.0"),
         12, "policies[0].thresold", "unknown key (did you mean 'threshold'?)"),
    Case("unknown-feature-key", _edit(10, "- {index: 1234, lable: tls}"),
         10, "policies[0].features[0].lable", "unknown key (did you mean 'label'?)"),
    Case("unknown-key-no-match", _edit(13, "action: block\nzzz: 1"),
         14, "policies[0].zzz", "unknown key (expected one of: name, description, sae,"),
    Case("missing-threshold", _edit(17, "window: 1"),
         14, "policies[1].threshold", "missing required key"),
    Case("missing-name", _edit(14, "- description: calm"),
         14, "policies[1].name", "missing required key"),
    Case("missing-version", _edit(1, "# no version"),
         2, "version", "missing required key"),
    Case("version-2", _edit(1, "version: 2"),
         1, "version", "expected 1, got integer 2"),
    Case("version-string", _edit(1, "version: '1'"),
         1, "version", "expected 1, got string '1'"),
    Case("undefined-sae", _edit(8, "sae: res7"),
         8, "policies[0].sae", "expected an SAE defined under saes ('res6'), got 'res7'"),
    Case("empty-features", _edit(16, "features: []"),
         16, "policies[1].features", "expected at least one of the features, got an empty list"),
    Case("features-not-list", _edit(16, "features: {index: 5}"),
         16, "policies[1].features", "expected a list of features, got a mapping"),
    Case("duplicate-index", _edit(11, "- {index: 1234, max: 2.0}"),
         11, "policies[0].features[1].index", "expected distinct indices, got 1234 again"),
    Case("duplicate-policy-name", _edit(14, "- name: unsafe-code"),
         14, "policies[1].name", "expected distinct policy names, got 'unsafe-code' again"),
    Case("duplicate-yaml-key", _edit(10, "- {index: 1234, label: tls, index: 7}"),
         10, "policies[0].features[0].index", "expected each key once, got it again"),
    Case("duplicate-sae-name", _edit(3, "res6: {path: other}\nres6:"),
         4, "saes.res6", "expected each key once, got it again (first at line 3)"),
    Case("bad-yaml", _edit(13, "action: block: x"),
         13, "", "invalid YAML: mapping values are not allowed here"),
    Case("tab-indent", _edit(13, "\taction: block"),
         13, "", "invalid YAML: found character '\\t' that cannot start any token"),
    Case("two-documents", BASE + "---\nversion: 1\n",
         20, "", "invalid YAML: but found another document"),
    Case("top-level-list", "- version: 1\n",
         1, "", "expected a mapping, got a list"),
    Case("empty-file", "# nothing here\n",
         1, "", "expected a mapping, got null"),
    Case("no-policies", _head(5, "policies: []"),
         6, "policies", "expected at least one of the policies, got an empty list"),
    Case("missing-policies", _head(5),
         1, "policies", "missing required key"),
    Case("no-saes", "version: 1\nsaes: {}\n" + "\n".join(LINES[5:]),
         2, "saes", "expected at least one SAE, got an empty mapping"),
    Case("policy-not-mapping", _head(13, "  - just a string"),
         14, "policies[1]", "expected a mapping, got string 'just a string'"),
    Case("suppress-missing", _edit(13, "action: suppress"),
         7, "policies[0].suppress", "missing section: required when action is 'suppress'"),
    Case("steer-forbidden", _edit(18, "action: log"),
         19, "policies[1].steer", "forbidden when action is 'log'"),
    Case("suppress-forbidden", _edit(13, "action: block\nsuppress: {method: ablate}"),
         14, "policies[0].suppress", "forbidden when action is 'block'"),
    Case("clamp-both", _edit(13, "action: suppress\n"
                                 "suppress: {method: clamp, value: 0, times_max: 1}"),
         14, "policies[0].suppress",
         "expected exactly one of value, times_max for method 'clamp', got both"),
    Case("clamp-neither", _edit(13, "action: suppress\nsuppress: {method: clamp}"),
         14, "policies[0].suppress", "got neither"),
    Case("ablate-value", _edit(13, "action: suppress\nsuppress: {method: ablate, value: 0}"),
         14, "policies[0].suppress.value", "forbidden for method 'ablate'"),
    Case("steer-both", _edit(19, "steer: {value: 1, times_max: 1}"),
         19, "policies[1].steer", "expected exactly one of value, times_max for steer, got both"),
    Case("times-max-without-max", _edit(16, "features: [{index: 5}]"),
         16, "policies[1].features[0].max", "missing: steer.times_max needs it (feature 5)"),
    Case("window-zero", _edit(13, "action: block\nwindow: 0"),
         14, "policies[0].window", "expected an integer >= 1, got integer 0"),
    Case("window-float", _edit(13, "action: block\nwindow: 1.5"),
         14, "policies[0].window", "expected an integer, got number 1.5"),
    Case("action-enum", _edit(13, "action: blok"),
         13, "policies[0].action", "expected one of 'log', 'block', 'suppress', 'steer', "
                                   "got string 'blok' (did you mean 'block'?)"),
    Case("scope-enum", _edit(13, "action: block\nscope: output"),
         14, "policies[0].scope", "expected one of 'prompt', 'response', 'both'"),
    Case("severity-enum", _edit(13, "action: block\nseverity: 3"),
         14, "policies[0].severity", "expected one of 'low', 'medium', 'high', got integer 3"),
    Case("fail-mode-enum", _edit(1, "version: 1\nfail_mode: shut"),
         2, "fail_mode", "expected one of 'closed', 'open', got string 'shut'"),
    Case("method-enum", _edit(13, "action: suppress\nsuppress: {method: zero}"),
         14, "policies[0].suppress.method", "expected one of 'clamp', 'ablate'"),
    Case("mode-enum", _edit(13, "action: suppress\nsuppress: {method: ablate, mode: never}"),
         14, "policies[0].suppress.mode", "expected one of 'conditional', 'always'"),
    Case("empty-name", _edit(14, "- name: ''"),
         14, "policies[1].name", "expected a non-empty string, got string ''"),
    Case("blank-sae-path", _edit(4, "path: '   '"),
         4, "saes.res6.path", "expected a non-empty string"),
    Case("null-hook", _edit(5, "hook:"),
         5, "saes.res6.hook", "expected a string, got null"),
    Case("blank-message", _edit(13, "action: block\nmessage: ' '"),
         14, "policies[0].message", "expected a non-empty string"),
    Case("description-list", _edit(13, "action: block\ndescription: [a]"),
         14, "policies[0].description", "expected a string, got a list"),
    Case("other-scheme", _edit(4, "path: s3://bucket/sae"),
         4, "saes.res6.path", "expected a local path or hf://org/repo[/path]"),
    Case("short-hf-ref", _edit(4, "path: hf://org"),
         4, "saes.res6.path", "expected a local path or hf://org/repo[/path]"),
    Case("long-label", _edit(10, "- {index: 1234, label: " + "x" * 5000 + "}"),
         10, "policies[0].features[0].label", "expected at most 4096 characters, got 5000"),
    Case("deep-nesting", _edit(12, "threshold: " + "[" * 100 + "]" * 100),
         12, "", "expected at most 32 levels of nesting, got more"),
    Case("non-string-key", _edit(5, "6: blocks.6.hook_resid_post"),
         5, "saes.res6", "expected a string key, got integer 6"),
    Case("unknown-tag", _edit(12, "threshold: !!python/name:os.system ''"),
         12, "policies[0].threshold", "!!python/name:os.system"),
    Case("merge-key", _edit(19, "steer: {<<: {value: 1}}"),
         19, "policies[1].steer", "merge key '<<'"),
    Case("audit-type", BASE + "audit: {path: log.jsonl, include_text: 1}\n",
         20, "audit.include_text", "expected true or false, got integer 1"),
    Case("audit-unknown-key", BASE + "audit: {paht: log.jsonl}\n",
         20, "audit.paht", "unknown key (did you mean 'path'?)"),
    Case("audit-not-mapping", BASE + "audit: log.jsonl\n",
         20, "audit", "expected a mapping, got string 'log.jsonl'"),
]
# fmt: on


def _write(tmp_path: Path, text: str) -> Path:
    """`text` saved as tmp_path/pol/policy.yaml, so that `../saes` is tmp_path/saes."""
    (tmp_path / "pol").mkdir(exist_ok=True)
    path = tmp_path / "pol" / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_loads_into_expected_objects(tmp_path: Path) -> None:
    """Every key of a valid file ends up in the matching dataclass field."""
    path = _write(tmp_path, VALID)
    expected = PolicySet(
        fail_mode="open",
        saes={
            "res6": SAESpec(
                name="res6",
                path=str(tmp_path / "saes" / "demo-res6"),
                hook="blocks.6.hook_resid_post",
                where=NOWHERE,
            ),
            "hub": SAESpec(name="hub", path="hf://org/repo/sub/path", where=NOWHERE),
        },
        policies=(
            Policy(
                name="unsafe-code",
                description="code that turns off a security check",
                sae="res6",
                features=(
                    FeatureSpec(
                        index=1234,
                        label="disables TLS verification",
                        weight=1.0,
                        max=7.5,
                        where=NOWHERE,
                    ),
                ),
                threshold=3.0,
                action="block",
                scope="response",
                window=2,
                message="This reply was withheld: it contained unsafe code.",
                severity="high",
                where=NOWHERE,
            ),
            Policy(
                name="quiet",
                sae="hub",
                features=(FeatureSpec(index=7, weight=2.0, max=4.0, where=NOWHERE),),
                threshold=1.0,
                action="suppress",
                suppress=SuppressSpec(method="clamp", times_max=-0.5, mode="always", where=NOWHERE),
                message="This reply was withheld by policy 'quiet'.",
                where=NOWHERE,
            ),
            Policy(
                name="calm",
                sae="res6",
                features=(FeatureSpec(index=5, where=NOWHERE),),
                threshold=0.5,
                action="steer",
                steer=SteerSpec(value=2.0, where=NOWHERE),
                message="This reply was withheld by policy 'calm'.",
                where=NOWHERE,
            ),
        ),
        audit=AuditSpec(path="logs/audit.jsonl", include_text=False, where=NOWHERE),
        file=str(path),
        where=NOWHERE,
    )
    assert load_policies(path) == expected


def test_defaults_are_applied() -> None:
    """Optional keys left out take the documented defaults."""
    loaded = load_policies_text(_head(13))
    policy = loaded.policies[0]
    assert (loaded.fail_mode, loaded.audit, loaded.file) == (
        "closed",
        AuditSpec(where=NOWHERE),
        None,
    )
    assert (policy.description, policy.scope, policy.window, policy.severity) == (
        None,
        "both",
        1,
        "medium",
    )
    assert policy.message == "This reply was withheld by policy 'unsafe-code'."
    assert (policy.features[1].label, policy.features[0].weight) == (None, 1.0)
    assert loaded.saes["res6"].hook == "blocks.6.hook_resid_post" and loaded.audit.include_text


def test_floats_accept_ints_and_values_have_float_type() -> None:
    """An int is accepted where a float is expected, and stored as a float."""
    loaded = load_policies_text(_edit(12, "threshold: 3"))
    assert type(loaded.policies[0].threshold) is float


def test_relative_sae_path_resolves_against_the_file_folder(tmp_path: Path) -> None:
    """A relative SAE path is made absolute from the policy file's folder; hf:// is kept."""
    path = _write(tmp_path, VALID)
    saes = load_policies(str(path)).saes
    assert saes["res6"].path == str(tmp_path / "saes" / "demo-res6")
    assert saes["hub"].path == "hf://org/repo/sub/path"


def test_text_source_resolves_against_base_dir(tmp_path: Path) -> None:
    """load_policies_text resolves relative SAE paths against base_dir."""
    loaded = load_policies_text(BASE, file="x.yaml", base_dir=tmp_path / "a")
    assert loaded.saes["res6"].path == str(tmp_path / "saes" / "demo-res6")
    assert loaded.saes["res6"].where.file == "x.yaml"


def test_dict_source_uses_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parsed dict resolves relative paths against the working directory and has no lines."""
    monkeypatch.chdir(tmp_path)
    policy = {"name": "p", "sae": "s", "features": [{"index": 0}], "threshold": 1, "action": "log"}
    loaded = load_policies({"version": 1, "saes": {"s": {"path": "sae"}}, "policies": [policy]})
    assert loaded.saes["s"].path == str(tmp_path / "sae")
    where = loaded.policies[0].where
    assert (loaded.file, where.file, where.line, where.key) == (None, "<dict>", None, "policies[0]")


def test_dict_source_problems_name_dict() -> None:
    """Problems of a dict source are located by key path, with `<dict>` as file."""
    with pytest.raises(PolicyError) as info:
        load_policies({"version": 1, "saes": {"s": {"path": 3}}, "policies": []})
    assert [str(p) for p in info.value.problems] == [
        "<dict>: saes.s.path: expected a string, got integer 3",
        "<dict>: policies: expected at least one of the policies, got an empty list",
    ]


def test_example_file_loads() -> None:
    """The shipped example policy file is valid."""
    assert len(load_policies(EXAMPLE).policies) >= 5


def test_locations_point_at_objects_and_keys() -> None:
    """Each object keeps its line, and a problem about one of its keys points at that key."""
    policy = load_policies_text(BASE, file="b.yaml").policies[0]
    feature = policy.features[1]
    assert (feature.where.line, feature.where.key) == (11, "policies[0].features[1]")
    problem = policy.where.problem("expected less", "threshold")
    assert str(problem) == "b.yaml:12:5: policies[0].threshold: expected less"
    assert feature.where.problem("too big", "index").column == 10
    assert policy.where.problem("gone", "window").line == 7


def test_objects_are_frozen() -> None:
    """Loaded objects cannot be changed, the SAE mapping included."""
    loaded = load_policies_text(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.policies[0].threshold = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        loaded.saes["other"] = loaded.saes["res6"]  # type: ignore[index]


def test_constructors_check_cross_field_rules() -> None:
    """A Policy built in code obeys the same cross-field rules as a loaded one."""
    feature = FeatureSpec(index=1, where=NOWHERE)
    with pytest.raises(PolicyError, match="required when action is 'steer'"):
        Policy(
            name="p",
            sae="s",
            features=(feature,),
            threshold=1.0,
            action="steer",
            message="m",
            where=NOWHERE,
        )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_file_gives_located_problem(tmp_path: Path, case: Case) -> None:
    """Each malformed file raises PolicyError naming the file, the line and the key path."""
    path = _write(tmp_path, case.text)
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    matching = [p for p in info.value.problems if (p.line, p.key) == (case.line, case.key)]
    assert any(case.fragment in p.message for p in matching), str(info.value)
    key = f" {case.key}:" if case.key else ""
    assert f"{path}:{case.line}:" in str(info.value) and key in str(info.value)


def test_validate_files_reports_every_problem(tmp_path: Path) -> None:
    """All mistakes of a file are reported, in line order, not just the first."""
    text = _edit(8, "sae: res7").replace("threshold: 3.0", "threshold: .nan")
    text = text.replace("index: 99,", "index: -4,").replace("action: steer", "action: stear")
    problems = validate_files([_write(tmp_path, text)])
    assert [(p.line, p.key) for p in problems] == [
        (8, "policies[0].sae"),
        (11, "policies[0].features[1].index"),
        (12, "policies[0].threshold"),
        (18, "policies[1].action"),
    ]


def test_validate_files_checks_several_files(tmp_path: Path) -> None:
    """Valid files give no problems; a missing file is a problem, not an exception."""
    good = _write(tmp_path, BASE)
    assert validate_files([good, EXAMPLE]) == []
    problems = validate_files([good, tmp_path / "missing.yaml"])
    assert len(problems) == 1 and "cannot read the policy file" in str(problems[0])


def test_yaml_text_given_as_path_gets_a_hint() -> None:
    """Passing YAML text to load_policies says to use load_policies_text."""
    with pytest.raises(PolicyError, match="use load_policies_text"):
        load_policies(BASE)


def test_non_utf8_file_is_a_problem(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is reported, not raised as UnicodeDecodeError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.replace("calm", "cálm").encode("latin-1"))
    assert "cannot read the policy file" in str(validate_files([path])[0])


def test_alias_bomb_is_rejected_quickly() -> None:
    """Aliases that expand to billions of values give one problem instead of a hang."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(PolicyError, match="expected at most 100000 values"):
        load_policies_text("\n".join(levels))
