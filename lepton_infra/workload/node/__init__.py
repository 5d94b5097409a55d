"""Code that runs ON the nodes. Standard library only: a node does not have lepton_infra installed.

`bootstrap.py` and `preflight.py` are sent as `python -c SOURCE` (they must work before anything was shipped);
`agent.py` is shipped with each run into `~/.lepton/runs/<run-id>/.agent/agent.py`; `upload.py` and
`metrics.py` (the node metrics sampler) travel in the launch spec and the agent writes them beside the run."""
