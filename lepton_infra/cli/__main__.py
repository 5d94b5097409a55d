"""`python -m lepton_infra.cli`: the same as the `lepton-infra` console script."""

from lepton_infra.cli import main

main()
