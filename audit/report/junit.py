"""JUnit XML of a gate verdict (``junit.xml``): one test case per rule, for CI dashboards.

A broken ``fail`` rule is a ``<failure>``, a rule whose metric was not computed an ``<error>``;
both carry the measured value, the bound judged, the limit and the justification. A broken
``warn`` rule passes, with the warning in its ``system-out``. Written with junitparser.
"""

from __future__ import annotations

from pathlib import Path

from junitparser import Error, Failure, JUnitXml, TestCase, TestSuite


def _details(rule: dict) -> str:
    lines = [f"check: {rule['description']}", f"result: {rule['message']}", f"severity: {rule['severity']}",
             f"justification: {rule['justification']}"]
    for w in rule.get("weakened") or []:
        lines.append(f"weakened (not allowed by the policy): {w}")
    for m in rule.get("measurements") or []:
        lines.append(f"  {m['where']}: value {m['value']}, judged {m['judged']} ({rule['bound']}), CI {m['ci95']}, "
                     f"chance {m['chance']}, limit {m['limit']}" + (f", missing: {m['missing']}" if m.get("missing")
                                                                    else ""))
    return "\n".join(lines)


def verdict_junit(verdict: dict) -> JUnitXml:
    """The stored verdict (``results["verdict"]``) as a JUnit document."""
    suite = TestSuite(f"speech-audit gate: {verdict.get('policy_name', '')}")
    suite.add_property("status", verdict.get("status", ""))
    suite.add_property("allow_weakened", ", ".join(verdict.get("allow_weakened") or []))
    for i, w in enumerate(verdict.get("weakenings") or []):
        suite.add_property(f"weakened.{i + 1}", f"[{w.get('kind')}{', allowed' if w.get('allowed') else ''}] "
                                                f"{w.get('text')}")
    for rule in verdict["rules"]:
        case = TestCase(f"{rule['name']}: {rule['metric']}", f"speech-audit.gate.{verdict.get('policy_name', '')}", 0.0)
        details = _details(rule)
        if rule["status"] == "fail":
            failure = Failure(rule["message"], "fail")
            failure.text = details
            case.result = [failure]
        elif rule["status"] == "error":
            error = Error(rule["message"], "error")
            error.text = details
            case.result = [error]
        else:
            case.system_out = (f"WARN: {details}" if rule["status"] == "warn" else details)
        suite.add_testcase(case)
    suite.update_statistics()
    xml = JUnitXml()
    xml.add_testsuite(suite)
    xml.update_statistics()
    return xml


def write_junit(verdict: dict, path: Path) -> None:
    """Write :func:`verdict_junit` to ``path``."""
    verdict_junit(verdict).write(str(path), pretty=True)


__all__ = ["verdict_junit", "write_junit"]
