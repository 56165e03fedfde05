import sys
from pathlib import Path

# Helpers shared by the scenarios' tests (playbook_runner) live in molecule/shared.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
