#!/usr/bin/env python3
"""
Say which AppArmor audit record came from which test (or phase) of the VM run.

    audit_report.py TIMELINE.jsonl KERNEL_LOG.txt

TIMELINE holds one JSON object per test or phase ({"name", "start", "end",
"outcome"}, wall-clock seconds; see audit_timeline.py). KERNEL_LOG is `dmesg`
output. Each `apparmor="..."` record carries `audit(<seconds>.<ms>:<serial>)`,
the time of the event itself, which places it in the test that was running.
Prints, per test, its outcome and its distinct audit records, then a summary.
Exit status 1 when a profile other than the sandbox's denied something: the
service itself was refused something it needs, so the profile has a bug.
"""
import collections
import json
import re
import sys

AUDIT = re.compile(r'audit\((?P<ts>\d+\.\d+):(?P<serial>\d+)\): (?P<body>apparmor="[A-Z]+".*)')
FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')
SANDBOX = "openedx_codejail_service//codejail_sandbox"
# Fields that differ on every run and only hide the repetition.
VOLATILE = {"pid", "ouid", "fsuid", "peer_pid", "error", "info"}
SLACK = 0.5  # seconds between a test's end and the next record's stamp


def parse_records(lines):
    records = []
    for line in lines:
        match = AUDIT.search(line)
        if match:
            fields = {k: v.strip('"') for k, v in FIELD.findall(match["body"])}
            records.append((float(match["ts"]), fields, match["body"]))
    return records


def short(fields):
    """The record without its per-run noise, for grouping repeats."""
    return " ".join(f'{k}="{v}"' for k, v in fields.items() if k not in VOLATILE)


def owner(ts, spans):
    """The innermost span running at ts: the one that began last (a test within a phase)."""
    running = [s for s in spans if s["start"] <= ts <= s["end"] + SLACK]
    if not running:
        return "(outside any test or phase)"
    return max(running, key=lambda s: s["start"])["name"]


def main(timeline_path, log_path):
    with open(timeline_path) as timeline:
        spans = [json.loads(line) for line in timeline if line.strip()]
    with open(log_path, errors="replace") as log:
        records = parse_records(log)

    by_owner = collections.defaultdict(collections.Counter)
    for ts, fields, _body in records:
        by_owner[owner(ts, spans)][short(fields)] += 1

    order = sorted(spans, key=lambda s: s["start"])
    print(f"AppArmor audit records by test: {len(records)} records")
    for span in order + [{"name": "(outside any test or phase)", "outcome": ""}]:
        counts = by_owner.get(span["name"])
        if span["name"].startswith("(") and not counts:
            continue
        print(f"\n{span['name']}  [{span['outcome']}]" if span["outcome"] else f"\n{span['name']}")
        for text, count in (counts or {}).items():
            print(f"    {count}x {text}")
        if not counts:
            print("    (no AppArmor record)")

    profiles = collections.Counter()
    foreign = collections.Counter()
    for _ts, fields, _body in records:
        profiles[(fields.get("apparmor"), fields.get("profile"))] += 1
        if fields.get("apparmor") == "DENIED" and fields.get("profile") != SANDBOX:
            foreign[short(fields)] += 1
    print("\nSummary (kind, profile, count):")
    for (kind, profile), count in sorted(profiles.items(), key=str):
        print(f"    {kind:8} {profile}  {count}")
    if foreign:
        print("\nDenied to the service itself (a profile bug, not the sandbox working):")
        for text, count in foreign.items():
            print(f"    {count}x {text}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
