"""Write deploy/k8s/components/monitoring/rules.yaml from deploy/monitoring/rules.yml.

The rule file is the one source of the alert rules: the compose profile's Prometheus loads it as
it is, and the PrometheusRule of the kustomize component carries its groups (kustomize cannot
include a file outside its root). The groups are copied as text, comments and layout included.

    .venv/bin/python deploy/monitoring/render_rules.py          # write rules.yaml
    .venv/bin/python deploy/monitoring/render_rules.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "deploy/monitoring/rules.yml"
TARGET = ROOT / "deploy/k8s/components/monitoring/rules.yaml"

HEADER = """\
# Generated from deploy/monitoring/rules.yml by deploy/monitoring/render_rules.py: edit that
# file, then run the script. The `release` label lets kube-prometheus-stack's Prometheus select
# this rule (its default ruleSelector); see kustomization.yaml.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: voteledger
  namespace: voteledger
  labels:
    app.kubernetes.io/name: voteledger
    app.kubernetes.io/component: monitoring
    release: kube-prometheus-stack
spec:
"""


def render(source: str) -> str:
    """The PrometheusRule: the header, then the rule file from its `groups:` key on, indented
    under `spec:` (the file's leading comments stay behind)."""
    lines = source.splitlines()
    start = lines.index("groups:")
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    wanted = render(SOURCE.read_text())
    if "--check" in argv:
        if TARGET.read_text() != wanted:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {Path(__file__).name}")
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
