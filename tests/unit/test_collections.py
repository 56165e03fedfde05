"""requirements.yml declares every collection the Ansible side uses, at the installed version."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from support import REPO

ANSIBLE_GALAXY = Path(sys.executable).parent / "ansible-galaxy"
# A module or plugin by its fully qualified name in YAML and templates, e.g.
# community.general.ufw (ansible.builtin is ansible-core itself); in Python, an import from
# ansible_collections.NAMESPACE.NAME.
FQCN = re.compile(r"\b([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*\b")
PYTHON_IMPORT = re.compile(r"\bansible_collections\.([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\b")
SCANNED = ["roles", "playbooks", "molecule", "site.yml", "ansible.cfg"]


def declared() -> dict[str, str]:
    requirements = yaml.safe_load((REPO / "requirements.yml").read_text())
    return {item["name"]: str(item["version"]) for item in requirements["collections"]}


def installed() -> dict[str, str]:
    listing = subprocess.run(
        [str(ANSIBLE_GALAXY), "collection", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, str] = {}
    for collections in json.loads(listing.stdout).values():
        for name, info in collections.items():
            found.setdefault(name, info["version"])  # the first path wins, as for Ansible
    return found


def used() -> set[str]:
    names = set()
    for root in SCANNED:
        path = REPO / root
        for file in [path] if path.is_file() else path.rglob("*"):
            if file.suffix in {".yml", ".yaml", ".j2", ".cfg"} and file.is_file():
                names.update(FQCN.findall(file.read_text()))
            elif file.suffix == ".py":
                names.update(".".join(m) for m in PYTHON_IMPORT.findall(file.read_text()))
    known_namespaces = {name.split(".")[0] for name in installed()}
    return {n for n in names if n.split(".")[0] in known_namespaces and n != "ansible.builtin"}


def test_the_declared_collections_are_the_installed_versions():
    have = installed()
    assert {name: have.get(name) for name in declared()} == declared()


def test_every_collection_used_is_declared():
    assert used() - set(declared()) == set()
