"""Ray job: decode and preprocess annotated videos into training-ready Parquet samples.

The job is ``crashchat preprocess``: same options, same defaults (``--help`` shows them). Launch on
a cluster (the project ships with the job)::

    crashchat submit preprocess --address http://127.0.0.1:8265 \\
        --annotations /shared/data --video-root /shared/data \\
        --model /shared/model --out /shared/preprocessed

or ``ray job submit --working-dir . -- python jobs/preprocess.py ...``. Run directly, it starts a Ray
here unless ``--address auto`` (a cluster on this node) or ``RAY_ADDRESS`` says which to join.
"""

import sys

from crashchat.cli import run_command

COMMAND = "preprocess"

if __name__ == "__main__":
    sys.exit(run_command(COMMAND))
