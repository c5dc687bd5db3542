"""Ray job: deploy checkpoints on the cluster's Ray Serve (they stay up after the job ends).

The job is ``crashchat serve deploy``: same options, same defaults (``--help`` shows them). Launch on
a cluster (the project ships with the job)::

    crashchat submit serve --address http://127.0.0.1:8265 \\
        --config serve/videollama3-7b.yaml --registry crashchat-7b

or ``ray job submit --working-dir . -- python jobs/serve.py ...``. Run directly, it starts a Ray
here unless ``--address auto`` (a cluster on this node) or ``RAY_ADDRESS`` says which to join.
"""

import sys

from crashchat.cli import run_command

COMMAND = "serve deploy"

if __name__ == "__main__":
    sys.exit(run_command(COMMAND))
