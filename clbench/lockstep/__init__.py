"""The building blocks of lockstep training, every tensor with a leading run axis: the backbones
(``backbones``: the MLP, ``resnet``: the reduced ResNet-18), the replay buffer (``buffer``) and what a
method sees of one training step (``step``: batches, forward, the loss layer that applies each run's
mask).

This package's face names the choices a config may make among them, without importing torch.
"""

BACKBONES = ("mlp", "resnet18")
HEADS = ("linear", "cosine")  # the classifier head: a linear layer, or ER-ACE's bias-free 10 x cosine
