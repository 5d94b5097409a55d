"""lepton-infra: GPU training clusters as Pulumi components, plus the SSH workload layer that runs jobs on them."""

__version__ = "0.1.0"
