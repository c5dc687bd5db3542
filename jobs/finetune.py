"""Ray job: LoRA fine-tuning of VideoLLaMA3 with Ray Train + DeepSpeed, tracked in MLflow.

The job is ``crashchat train``: same options, same defaults (``--help`` shows them). Launch on
a cluster (the project ships with the job)::

    crashchat submit train --address http://127.0.0.1:8265 \\
        --config jobs/configs/videollama3-7b.yaml --data /shared/preprocessed \\
        --model /shared/VideoLLaMA3-7B-native --output /shared/checkpoints --strategy all

or ``ray job submit --working-dir . -- python jobs/finetune.py ...``. Run directly, it starts a Ray
here unless ``--address auto`` (a cluster on this node) or ``RAY_ADDRESS`` says which to join.
"""

import sys

from crashchat.cli import run_command

COMMAND = "train"

if __name__ == "__main__":
    sys.exit(run_command(COMMAND))
