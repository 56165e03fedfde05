"""Sum every JUnit XML file in a folder into one line: `N passed, N failed`.

usage: summarize_junit.py FOLDER [EXIT_STATUS_OF_THE_RUN]
A run that failed outside any test (a converge that broke before Molecule's verify wrote its
report, a lint error) counts as one failure, so the line never reads 0 failed for a red run.
Exits non-zero when anything failed or when no test ran at all.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

passed = failed = skipped = 0
for report in sorted(Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        tests, skips = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        passed += tests - bad - skips
        failed += bad
        skipped += skips
if len(sys.argv) > 2 and sys.argv[2] != "0" and failed == 0:
    failed = 1
line = f"{passed} passed, {failed} failed"
print(line + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed or passed == 0 else 0)
