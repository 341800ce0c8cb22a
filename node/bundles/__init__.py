"""MONAI bundles (Model Zoo layout) imported as models both backends serve: ``ainode models
import``. :mod:`.source` opens a bundle and parses it with MONAI's own ``ConfigParser``,
:mod:`.mapping` maps its inference config onto the node's model contract (or lists what cannot
be reproduced), :mod:`.codes` gives its labels their SEG/SR codes, :mod:`.export` builds the
network, loads its weights and writes the model directory."""

__all__ = ["codes", "export", "importer", "mapping", "source"]
