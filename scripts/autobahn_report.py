#!/usr/bin/env python3
"""Summarizes an Autobahn|Testsuite index.json; exits 1 on any FAILED case (or none run).

Usage: autobahn_report.py target/autobahn/reports/server/index.json
Prints, per agent, the count of each behavior and the NON-STRICT / FAILED cases.
"""
import json
import sys
from collections import Counter


def case_key(case):
    return tuple(int(p) for p in case.split("."))


def main(path):
    with open(path) as f:
        index = json.load(f)
    failed = False
    for agent, cases in sorted(index.items()):
        counts = Counter()
        notable = []
        for case in sorted(cases, key=case_key):
            r = cases[case]
            b = r["behavior"]
            counts[b] += 1
            if b in ("NON-STRICT", "FAILED", "WRONG CODE", "UNCLEAN"):
                notable.append(f"  {case}: {b} (close: {r.get('behaviorClose')})")
            if b == "FAILED":
                failed = True
        print(f"{agent}: {len(cases)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print("\n".join(notable))
        if not cases:
            failed = True
    if failed:
        print("autobahn: FAILED cases present", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
