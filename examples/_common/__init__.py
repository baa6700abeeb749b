"""Parts shared by the example training programs (not part of the sj_parallel package).

- :mod:`.engine`: command-line groups, run folders, the training loop with exact
  ``--resume``, atomic checkpoints, torchrun/DDP, AMP, metrics and TensorBoard.
- :mod:`.neurons`: the neuron choices (SpikingJelly's LIF and sj_parallel's PSN
  family and MPE-PSN) and their per-epoch schedules.
- :mod:`.losses`: TET, firing-rate MSE, cross-entropy of the mean output, and the
  check that a loss fits the network's output layer.
- :mod:`.mixup`: the MPE-PSN authors' mixup and the PSN paper's mixup/cutmix.

The programs put ``examples/`` on ``sys.path`` and ``import _common``.
"""
