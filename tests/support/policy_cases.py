"""Policy files shared by tests/policy: valid texts, and a table of malformed ones.

Each malformed case is BASE with a few lines changed, and says where the loader's problem must
point (tests/policy/test_load.py); tests/policy/test_schema.py checks the JSON schema on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "example.yaml"

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


def edit(line: int, new: str) -> str:
    """BASE with line `line` (1-based) replaced by the lines of `new`, at its indentation."""
    indent = LINES[line - 1][: len(LINES[line - 1]) - len(LINES[line - 1].lstrip())]
    return (
        "\n".join([*LINES[: line - 1], *(indent + x for x in new.split("\n")), *LINES[line:]])
        + "\n"
    )


def head(last: int, *tail: str) -> str:
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
    Case("threshold-bool", edit(12, "threshold: true"),
         12, "policies[0].threshold", "expected a number, got boolean true"),
    Case("threshold-string", edit(12, "threshold: '3'"),
         12, "policies[0].threshold", "expected a number, got string '3'"),
    Case("threshold-nan", edit(12, "threshold: .nan"),
         12, "policies[0].threshold", "expected a finite number, got number nan"),
    Case("threshold-inf", edit(12, "threshold: -.inf"),
         12, "policies[0].threshold", "expected a finite number"),
    Case("threshold-overflow", edit(12, "threshold: 1" + "0" * 400),
         12, "policies[0].threshold", "expected a finite number"),
    Case("weight-nan", edit(11, "- {index: 99, weight: .nan, max: 2.0}"),
         11, "policies[0].features[1].weight", "expected a finite number"),
    Case("max-zero", edit(10, "- {index: 1234, label: tls, max: 0}"),
         10, "policies[0].features[0].max", "expected a number > 0"),
    Case("index-negative", edit(10, "- {index: -1, label: tls, max: 7.5}"),
         10, "policies[0].features[0].index", "expected an integer >= 0, got integer -1"),
    Case("index-float", edit(10, "- {index: 12.5, label: tls, max: 7.5}"),
         10, "policies[0].features[0].index", "expected an integer, got number 12.5"),
    Case("index-whole-float", edit(10, "- {index: 12.0, label: tls, max: 7.5}"),
         10, "policies[0].features[0].index", "expected an integer, got number 12.0"),
    Case("index-string", edit(10, "- {index: '1234', label: tls}"),
         10, "policies[0].features[0].index", "expected an integer, got string '1234'"),
    Case("index-bool", edit(10, "- {index: true, label: tls}"),
         10, "policies[0].features[0].index", "expected an integer, got boolean true"),
    Case("unknown-top-key", BASE + "failmode: open\n",
         20, "failmode", "unknown key (did you mean 'fail_mode'?)"),
    Case("unknown-sae-key", edit(5, "hok: blocks.6.hook_resid_post"),
         5, "saes.res6.hok", "unknown key (did you mean 'hook'?)"),
    Case("unknown-policy-key", edit(12, "thresold: 3.0"),
         12, "policies[0].thresold", "unknown key (did you mean 'threshold'?)"),
    Case("unknown-feature-key", edit(10, "- {index: 1234, lable: tls}"),
         10, "policies[0].features[0].lable", "unknown key (did you mean 'label'?)"),
    Case("unknown-key-no-match", edit(13, "action: block\nzzz: 1"),
         14, "policies[0].zzz", "unknown key (expected one of: name, description, sae,"),
    Case("missing-threshold", edit(17, "window: 1"),
         14, "policies[1].threshold", "missing required key"),
    Case("missing-name", edit(14, "- description: calm"),
         14, "policies[1].name", "missing required key"),
    Case("missing-version", edit(1, "# no version"),
         2, "version", "missing required key"),
    Case("version-2", edit(1, "version: 2"),
         1, "version", "expected 1, got integer 2"),
    Case("version-string", edit(1, "version: '1'"),
         1, "version", "expected 1, got string '1'"),
    Case("undefined-sae", edit(8, "sae: res7"),
         8, "policies[0].sae", "expected an SAE defined under saes ('res6'), got 'res7'"),
    Case("empty-features", edit(16, "features: []"),
         16, "policies[1].features", "expected at least one of the features, got an empty list"),
    Case("features-not-list", edit(16, "features: {index: 5}"),
         16, "policies[1].features", "expected a list of features, got a mapping"),
    Case("duplicate-index", edit(11, "- {index: 1234, max: 2.0}"),
         11, "policies[0].features[1].index", "expected distinct indices, got 1234 again"),
    Case("duplicate-policy-name", edit(14, "- name: unsafe-code"),
         14, "policies[1].name", "expected distinct policy names, got 'unsafe-code' again"),
    Case("duplicate-yaml-key", edit(10, "- {index: 1234, label: tls, index: 7}"),
         10, "policies[0].features[0].index", "expected each key once, got it again"),
    Case("duplicate-sae-name", edit(3, "res6: {path: other}\nres6:"),
         4, "saes.res6", "expected each key once, got it again (first at line 3)"),
    Case("bad-yaml", edit(13, "action: block: x"),
         13, "", "invalid YAML: mapping values are not allowed here"),
    Case("tab-indent", edit(13, "\taction: block"),
         13, "", "invalid YAML: found character '\\t' that cannot start any token"),
    Case("two-documents", BASE + "---\nversion: 1\n",
         20, "", "invalid YAML: but found another document"),
    Case("top-level-list", "- version: 1\n",
         1, "", "expected a mapping, got a list"),
    Case("empty-file", "# nothing here\n",
         1, "", "expected a mapping, got null"),
    Case("no-policies", head(5, "policies: []"),
         6, "policies", "expected at least one of the policies, got an empty list"),
    Case("missing-policies", head(5),
         1, "policies", "missing required key"),
    Case("no-saes", "version: 1\nsaes: {}\n" + "\n".join(LINES[5:]),
         2, "saes", "expected at least one SAE, got an empty mapping"),
    Case("policy-not-mapping", head(13, "  - just a string"),
         14, "policies[1]", "expected a mapping, got string 'just a string'"),
    Case("suppress-missing", edit(13, "action: suppress"),
         7, "policies[0].suppress", "missing section: required when action is 'suppress'"),
    Case("steer-forbidden", edit(18, "action: log"),
         19, "policies[1].steer", "forbidden when action is 'log'"),
    Case("suppress-forbidden", edit(13, "action: block\nsuppress: {method: ablate}"),
         14, "policies[0].suppress", "forbidden when action is 'block'"),
    Case("clamp-both", edit(13, "action: suppress\n"
                                "suppress: {method: clamp, value: 0, times_max: 1}"),
         14, "policies[0].suppress",
         "expected exactly one of value, times_max for method 'clamp', got both"),
    Case("clamp-neither", edit(13, "action: suppress\nsuppress: {method: clamp}"),
         14, "policies[0].suppress", "got neither"),
    Case("ablate-value", edit(13, "action: suppress\nsuppress: {method: ablate, value: 0}"),
         14, "policies[0].suppress.value", "forbidden for method 'ablate'"),
    Case("steer-both", edit(19, "steer: {value: 1, times_max: 1}"),
         19, "policies[1].steer", "expected exactly one of value, times_max for steer, got both"),
    Case("times-max-without-max", edit(16, "features: [{index: 5}]"),
         16, "policies[1].features[0].max", "missing: steer.times_max needs it (feature 5)"),
    Case("window-zero", edit(13, "action: block\nwindow: 0"),
         14, "policies[0].window", "expected an integer >= 1, got integer 0"),
    Case("window-float", edit(13, "action: block\nwindow: 1.5"),
         14, "policies[0].window", "expected an integer, got number 1.5"),
    Case("action-enum", edit(13, "action: blok"),
         13, "policies[0].action", "expected one of 'log', 'block', 'suppress', 'steer', "
                                   "got string 'blok' (did you mean 'block'?)"),
    Case("scope-enum", edit(13, "action: block\nscope: output"),
         14, "policies[0].scope", "expected one of 'prompt', 'response', 'both'"),
    Case("severity-enum", edit(13, "action: block\nseverity: 3"),
         14, "policies[0].severity", "expected one of 'low', 'medium', 'high', got integer 3"),
    Case("fail-mode-enum", edit(1, "version: 1\nfail_mode: shut"),
         2, "fail_mode", "expected one of 'closed', 'open', got string 'shut'"),
    Case("method-enum", edit(13, "action: suppress\nsuppress: {method: zero}"),
         14, "policies[0].suppress.method", "expected one of 'clamp', 'ablate'"),
    Case("mode-enum", edit(13, "action: suppress\nsuppress: {method: ablate, mode: never}"),
         14, "policies[0].suppress.mode", "expected one of 'conditional', 'latched', 'always'"),
    Case("empty-name", edit(14, "- name: ''"),
         14, "policies[1].name", "expected a non-empty string, got string ''"),
    Case("blank-sae-path", edit(4, "path: '   '"),
         4, "saes.res6.path", "expected a non-empty string"),
    Case("null-hook", edit(5, "hook:"),
         5, "saes.res6.hook", "expected a string, got null"),
    Case("blank-message", edit(13, "action: block\nmessage: ' '"),
         14, "policies[0].message", "expected a non-empty string"),
    Case("description-list", edit(13, "action: block\ndescription: [a]"),
         14, "policies[0].description", "expected a string, got a list"),
    Case("other-scheme", edit(4, "path: s3://bucket/sae"),
         4, "saes.res6.path", "expected a local path or hf://org/repo[/path]"),
    Case("short-hf-ref", edit(4, "path: hf://org"),
         4, "saes.res6.path", "expected a local path or hf://org/repo[/path]"),
    Case("long-label", edit(10, "- {index: 1234, label: " + "x" * 5000 + "}"),
         10, "policies[0].features[0].label", "expected at most 4096 characters, got 5000"),
    Case("deep-nesting", edit(12, "threshold: " + "[" * 100 + "]" * 100),
         12, "", "expected at most 32 levels of nesting, got more"),
    Case("non-string-key", edit(5, "6: blocks.6.hook_resid_post"),
         5, "saes.res6", "expected a string key, got integer 6"),
    Case("unknown-tag", edit(12, "threshold: !!python/name:os.system ''"),
         12, "policies[0].threshold", "!!python/name:os.system"),
    Case("merge-key", edit(19, "steer: {<<: {value: 1}}"),
         19, "policies[1].steer", "merge key '<<'"),
    Case("calibration-rate",
         edit(13, "action: block\ncalibration: {target_rate: 1.5, bound: 0.01, confidence: 0.95,"
                  " set_sha256: " + "a" * 64 + ", set_size: 300, date: '2025-01-01'}"),
         14, "policies[0].calibration.target_rate", "expected a number in (0, 1), got number 1.5"),
    Case("calibration-sha",
         edit(13, "action: block\ncalibration: {target_rate: 0.01, bound: 0.01, confidence: 0.95,"
                  " set_sha256: abc, set_size: 300, date: '2025-01-01'}"),
         14, "policies[0].calibration.set_sha256", "expected a SHA-256 of 64 hex digits"),
    Case("calibration-missing",
         edit(13, "action: block\ncalibration: {target_rate: 0.01}"),
         14, "policies[0].calibration.bound", "missing required key"),
    Case("audit-type", BASE + "audit: {path: log.jsonl, include_text: 1}\n",
         20, "audit.include_text", "expected true or false, got integer 1"),
    Case("audit-unknown-key", BASE + "audit: {paht: log.jsonl}\n",
         20, "audit.paht", "unknown key (did you mean 'path'?)"),
    Case("audit-not-mapping", BASE + "audit: log.jsonl\n",
         20, "audit", "expected a mapping, got string 'log.jsonl'"),
    Case("trace-features-enum", BASE + "audit:\n  trace: {features: all, path: t}\n",
         21, "audit.trace.features", "expected one of 'policy', 'topk', got string 'all'"),
    Case("trace-k-zero", BASE + "audit:\n  trace: {features: topk, k: 0, path: t}\n",
         21, "audit.trace.k", "expected an integer >= 1, got integer 0"),
    Case("trace-missing-path", BASE + "audit:\n  trace: {features: policy}\n",
         21, "audit.trace.path", "missing required key"),
    Case("trace-unknown-key", BASE + "audit:\n  trace: {path: t, top_k: 8}\n",
         21, "audit.trace.top_k", "unknown key (expected one of: features, k, path)"),
    Case("audit-fsync-enum", BASE + "audit: {fsync: always}\n",
         20, "audit.fsync",
         "expected one of 'request', 'record', 'never', got string 'always'"),
    Case("audit-fsync-bool", BASE + "audit: {fsync: true}\n",
         20, "audit.fsync", "got boolean true"),
    Case("audit-fsync-typo", BASE + "audit: {fsync: requests}\n",
         20, "audit.fsync", "(did you mean 'request'?)"),
    Case("rotate-bytes-zero", BASE + "audit:\n  rotate: {max_bytes: 0}\n",
         21, "audit.rotate.max_bytes", "expected an integer >= 1, got integer 0"),
    Case("rotate-bytes-float", BASE + "audit:\n  rotate: {max_bytes: 1.5}\n",
         21, "audit.rotate.max_bytes", "expected an integer, got number 1.5"),
    Case("rotate-bytes-string", BASE + "audit:\n  rotate: {max_bytes: 10MB}\n",
         21, "audit.rotate.max_bytes", "expected an integer, got string '10MB'"),
    Case("rotate-seconds-negative", BASE + "audit:\n  rotate: {max_seconds: -5}\n",
         21, "audit.rotate.max_seconds", "expected a number > 0, got integer -5"),
    Case("rotate-seconds-zero",
         BASE + "audit:\n  rotate:\n    max_bytes: 100\n    max_seconds: 0\n",
         23, "audit.rotate.max_seconds", "expected a number > 0, got integer 0"),
    Case("rotate-seconds-string", BASE + "audit:\n  rotate: {max_seconds: 1h}\n",
         21, "audit.rotate.max_seconds", "expected a number, got string '1h'"),
    Case("rotate-empty", BASE + "audit:\n  rotate: {}\n",
         21, "audit.rotate", "expected at least one of max_bytes, max_seconds"),
    Case("rotate-unknown-key", BASE + "audit:\n  rotate: {max_byte: 10}\n",
         21, "audit.rotate.max_byte", "unknown key (did you mean 'max_bytes'?)"),
    Case("rotate-not-mapping", BASE + "audit:\n  rotate: 100\n",
         21, "audit.rotate", "expected a mapping, got integer 100"),
]
# fmt: on
