"""``python -m polypool fit --config configs/voc/vgg.yaml``: see :mod:`polypool.cli`."""

from .cli import main

main()
