"""scFoundation (xTrimoGene, BioMap): the official `models.ckpt` layout, served per layer."""
