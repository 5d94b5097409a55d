"""lepton-infra's Pulumi policy rules; `rules.POLICIES` is what the pack serves."""
