"""Train an OVSSC network (open-vocabulary semantic scene completion).

Running it: docs/training.md; what it computes: docs/method.md#training. The task (loss, per-row
columns) is tasks.OVSSC; the loop, checkpoints and logging are training.py's.

    python train_ovssc.py --file_path dataset/ --log logs/ovssc
    torchrun --standalone --nproc_per_node 2 -- train_ovssc.py --file_path dataset/ --log logs/ovssc

The `--` is needed: torchrun's own parser (torch 2.x) otherwise stops with "ambiguous option:
--log could match --log-dir, --log_dir, ...".
"""

from __future__ import annotations

import tasks
import training


def main(argv: list[str] | None = None) -> None:
    training.main(tasks.OVSSC, argv)


if __name__ == "__main__":
    main()
