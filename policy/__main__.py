"""Entry point of the lepton-infra policy pack: serves `lepton_policy.rules.POLICIES`.

Constructing `PolicyPack` starts the analyzer's gRPC server and never returns, so nothing but the
Pulumi CLI should run (or import) this file; tests import `lepton_policy.rules` instead."""

import sys
from pathlib import Path

try:
    import lepton_infra  # noqa: F401  (installed: the catalog comes from the package)
except ImportError:
    # Run from a checkout without the package installed: use the repository's copy.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lepton_policy.rules import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name="lepton-infra",
    description="Security, leak-proofing and budget rules for lepton-infra GPU clusters.",
    enforcement_level=EnforcementLevel.ADVISORY,  # each rule sets its own level; see README.md
    policies=POLICIES,
)
