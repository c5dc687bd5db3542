"""Ray job: batch evaluation of a checkpoint, registry model or base model on Ray Data.

The job is ``crashchat evaluate``: same options, same defaults (``--help`` shows them). Launch on
a cluster (the project ships with the job)::

    crashchat submit evaluate --address http://127.0.0.1:8265 \\
        --model models:/crashchat@heterogeneous --annotations /shared/annotations \\
        --video-root /shared/videos --out /shared/eval/hete

or ``ray job submit --working-dir . -- python jobs/evaluate.py ...``. Run directly, it starts a Ray
here unless ``--address auto`` (a cluster on this node) or ``RAY_ADDRESS`` says which to join.
"""

import sys

from crashchat.cli import run_command

COMMAND = "evaluate"

if __name__ == "__main__":
    sys.exit(run_command(COMMAND))
