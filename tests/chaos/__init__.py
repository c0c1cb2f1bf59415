"""Partition (chaos) tests: a ``--netns`` local cluster whose links are cut and healed while a
sampler watches every group manager and VMs are submitted."""
