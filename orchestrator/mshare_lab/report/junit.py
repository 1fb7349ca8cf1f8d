"""``mshare-lab run --junit-xml FILE``: one JUnit testcase per scenario, for CI systems.

The common (Jenkins/GitLab/pytest) dialect: ``<testsuites><testsuite>`` with
``<testcase classname name time>``; an unmet expectation is a ``<failure>`` whose
message is the first unmet expectation and whose text lists all of them with the
outcome; an ``infra-error`` is an ``<error>`` (the machinery failed, not the kernel); an
``unsupported`` run that expected nothing else is ``<skipped>``. Properties carry the
run id and outcome, as the pytest plugin's items do under ``--junitxml``. Written with
the standard library's ElementTree.
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

from ..lab.record import RunRecord

INFRA = "infra-error"


def to_element(records: Iterable[RunRecord], *, suite: str = "mshare-lab") -> ET.Element:
    records = list(records)
    root = ET.Element("testsuites")
    testsuite = ET.SubElement(root, "testsuite", name=suite, hostname=socket.gethostname(),
                              timestamp=time.strftime("%Y-%m-%dT%H:%M:%S",
                                                      time.gmtime(min((r.started_at for r in records), default=0)
                                                                  or time.time())))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total = 0.0
    for record in records:
        counts["tests"] += 1
        total += record.wall_seconds
        case = ET.SubElement(testsuite, "testcase", classname=_classname(record), name=record.scenario_id,
                             time=f"{record.wall_seconds:.3f}")
        properties = ET.SubElement(case, "properties")
        for name, value in (("run_id", record.run_id), ("outcome", record.outcome),
                            ("kernel", record.scenario.kernel), ("mechanism", record.scenario.workload.mechanism),
                            ("console_log", record.console_log)):
            if value:
                ET.SubElement(properties, "property", name=name, value=str(value))
        summary = f"outcome {record.outcome}" + (f": {record.reason}" if record.reason else "")
        if record.outcome == INFRA:
            counts["errors"] += 1
            ET.SubElement(case, "error", message=f"infra-error, not a kernel result: {record.reason or ''}",
                          type="infra-error").text = summary
        elif record.expectation_failures:
            counts["failures"] += 1
            failure = ET.SubElement(case, "failure", message=record.expectation_failures[0], type="expectation")
            failure.text = "\n".join([summary] + [f"- {f}" for f in record.expectation_failures])
        elif record.outcome == "unsupported" and "outcome" not in (record.scenario.expect or {}):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=summary)
        if record.reason or record.console_log:
            ET.SubElement(case, "system-out").text = "\n".join(
                x for x in (summary, f"console: {record.console_log}" if record.console_log else "") if x)
    for element in (root, testsuite):
        element.set("tests", str(counts["tests"]))
        element.set("failures", str(counts["failures"]))
        element.set("errors", str(counts["errors"]))
        element.set("time", f"{total:.3f}")
    testsuite.set("skipped", str(counts["skipped"]))
    return root


def write(records: Iterable[RunRecord], out: Path, *, suite: str = "mshare-lab") -> Path:
    """Write the XML beside and rename: CI never reads half a file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = ET.ElementTree(to_element(records, suite=suite))
    ET.indent(tree)
    partial = out.with_name(out.name + ".partial")
    try:
        tree.write(partial, encoding="utf-8", xml_declaration=True)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _classname(record: RunRecord) -> str:
    # CI tools group by classname: kernel, then mechanism (dots are their separators)
    return f"mshare-lab.{record.scenario.kernel.replace('.', '_')}.{record.scenario.workload.mechanism}"
