"""Ray job: the whole pipeline, preprocess -> train -> evaluate -> compare -> serve, as one job.

The job is ``crashchat pipeline``: same options, same defaults (``--help`` shows them). Launch on
a cluster (the project ships with the job)::

    crashchat submit pipeline --address http://127.0.0.1:8265 \\
        --config jobs/configs/pipeline-tiny.yaml --annotations /shared/data \\
        --video-root /shared/data --model /shared/model --output /shared/run

or ``ray job submit --working-dir . -- python jobs/pipeline.py ...``. Run directly, it starts a Ray
here unless ``--address auto`` (a cluster on this node) or ``RAY_ADDRESS`` says which to join.
"""

import sys

from crashchat.cli import run_command

COMMAND = "pipeline"

if __name__ == "__main__":
    sys.exit(run_command(COMMAND))
