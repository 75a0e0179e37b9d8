"""
The sandbox package sets (requirements/sandbox/sets.txt), for deploy/provision.sh and `make upgrade`.

Standard library only: provisioning runs it with the sandbox's Python before any venv exists.

    sandbox_sets.py resolve CHOICE PYTHON_VERSION   the pins file to install (CHOICE: a set's name,
                                                    a file, or "" for the default of that Python)
    sandbox_sets.py diff                            each set's pins against the platform's file it
                                                    follows (`make upgrade` prints it)
"""
import os
import re
import sys

SANDBOX_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "requirements", "sandbox")
SETS_FILE = os.path.join(SANDBOX_DIR, "sets.txt")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)")


class SetError(Exception):
    """A choice of set that provisioning cannot honour."""


def read_sets(path=SETS_FILE):
    """``[{"name", "python", "pins", "platform"}, ...]`` in the table's order (newest first); paths absolute."""
    sets = []
    with open(path, encoding="utf-8") as table:
        for line in table:
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            name, python, pins, platform = fields
            base = os.path.dirname(path)
            sets.append({"name": name, "python": python, "pins": os.path.join(base, pins),
                         "platform": os.path.join(base, platform)})
    return sets


def resolve(choice, python_version, sets=None, checkout=None):
    """
    The pins file for ``choice`` on Python ``python_version`` ("3.11"): the named set (which must be
    for that Python), the operator's own file (absolute, or relative to ``checkout``), or, with no
    choice, the first set for that Python.
    """
    sets = read_sets() if sets is None else sets
    checkout = checkout or os.path.dirname(os.path.dirname(SANDBOX_DIR))
    if not choice:
        for entry in sets:
            if entry["python"] == python_version:
                return entry["pins"]
        known = ", ".join(f"{entry['name']} ({entry['python']})" for entry in sets)
        raise SetError(f"no sandbox package set for Python {python_version}: name a file of your own (sets: {known})")
    for entry in sets:
        if entry["name"] == choice:
            if entry["python"] != python_version:
                raise SetError(f"the sandbox package set {choice} is for Python {entry['python']}, "
                               f"the sandbox's Python is {python_version}")
            return entry["pins"]
    path = choice if os.path.isabs(choice) else os.path.join(checkout, choice)
    if not os.path.isfile(path):
        raise SetError(f"{choice!r} is neither a sandbox package set ({', '.join(e['name'] for e in sets)}) nor a file")
    return path


def set_name(pins, sets=None):
    """The set's name for a pins file, or the file's own path if it is the operator's."""
    for entry in read_sets() if sets is None else sets:
        if os.path.abspath(entry["pins"]) == os.path.abspath(pins):
            return entry["name"]
    return os.path.abspath(pins)


def pins(path):
    """``{normalized name: version}`` of a pip requirements file's ``name==version`` lines."""
    found = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            match = PIN.match(line.strip())
            if match:
                found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def differences(entry):
    """Lines saying how a set's pins differ from the platform's file it follows (none: equal)."""
    ours, platform = pins(entry["pins"]), pins(entry["platform"])
    lines = []
    for name in sorted(set(ours) | set(platform)):
        if ours.get(name) != platform.get(name):
            lines.append(f"  {name}: platform {platform.get(name, '-')}, {entry['name']} {ours.get(name, '-')}")
    return lines


def main(argv):
    try:
        if argv[:1] == ["resolve"] and len(argv) == 3:
            pins_file = resolve(argv[1], argv[2])
            print(pins_file)
            print(set_name(pins_file))
        elif argv == ["diff"]:
            for entry in read_sets():
                lines = differences(entry)
                platform = os.path.relpath(entry["platform"], SANDBOX_DIR)
                print(f"{entry['name']} (Python {entry['python']}) against {platform}: "
                      + (f"{len(lines)} different" if lines else "the same pins"))
                for line in lines:
                    print(line)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except SetError as exc:
        print(f"sandbox package set: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
