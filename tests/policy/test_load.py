"""Loading policy files: valid files become the expected objects, bad ones located problems."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from policy_cases import BASE, CASES, EXAMPLE, VALID, Case, edit, head

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
from featureguard.policy.model import CalibrationSpec

NOWHERE = Location(file="<test>", line=None, column=None, key="")


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
    loaded = load_policies_text(head(13))
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
    loaded = load_policies_text(edit(12, "threshold: 3"))
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


def test_dict_source_with_non_string_names() -> None:
    """A dict whose SAE names are not strings gives problems, also for references to them."""
    policy = {
        "name": "p",
        "sae": "res",
        "features": [{"index": 0}],
        "threshold": 1,
        "action": "log",
    }
    with pytest.raises(PolicyError) as info:
        load_policies(
            {"version": 1, "saes": {1: {"path": "x"}, "res6": {"path": "y"}}, "policies": [policy]}
        )
    assert [p.key for p in info.value.problems] == ["saes.1", "policies[0].sae"]
    assert "did you mean 'res6'?" in info.value.problems[1].message


def test_example_file_loads() -> None:
    """The shipped example policy file is valid."""
    assert len(load_policies(EXAMPLE).policies) >= 5


def test_calibration_record_loads() -> None:
    """A policy's calibration record becomes a CalibrationSpec; recall may be left out."""
    record = "{target_rate: 0.01, bound: 0.0099, confidence: 0.95, set_size: 300, date: '2025'"
    text = edit(13, f"action: block\ncalibration: {record}, set_sha256: {'ab' * 32}}}")
    calibration = load_policies_text(text).policies[0].calibration
    assert calibration == CalibrationSpec(
        target_rate=0.01,
        bound=0.0099,
        confidence=0.95,
        set_sha256="ab" * 32,
        set_size=300,
        date="2025",
        where=NOWHERE,
    )
    assert calibration.recall is None and load_policies_text(BASE).policies[0].calibration is None


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
    text = edit(8, "sae: res7").replace("threshold: 3.0", "threshold: .nan")
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


def test_audit_durability_and_rotation_load() -> None:
    """audit.fsync and audit.rotate end up in AuditSpec; max_seconds is stored as a float."""
    from featureguard.policy.model import RotateSpec

    text = BASE + "audit:\n  fsync: record\n  rotate: {max_bytes: 1000, max_seconds: 60}\n"
    audit = load_policies_text(text).audit
    assert audit == AuditSpec(
        fsync="record", rotate=RotateSpec(max_bytes=1000, max_seconds=60.0, where=NOWHERE),
        where=NOWHERE,
    )  # fmt: skip
    assert type(audit.rotate.max_seconds) is float
    only_age = load_policies_text(BASE + "audit: {rotate: {max_seconds: 0.5}}\n").audit.rotate
    assert (only_age.max_bytes, only_age.max_seconds) == (None, 0.5)
