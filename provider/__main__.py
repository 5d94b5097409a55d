"""Plugin entry point: the Pulumi Python language host runs `python <this directory> <engine>`.

Serves lepton-infra's TrainingCluster, ObjectStore and JobQueue to programs in any language
(see README.md, "Using from other languages"). The checkout this file sits in wins over any installed copy, so
the components a program gets are the ones next to this PulumiPlugin.yaml.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lepton_infra.provider import serve  # noqa: E402  (after the path set-up above)

if __name__ == "__main__":
    serve()
