"""Networks brought by a site, as models both backends serve: MONAI bundles (Model Zoo layout,
``ainode models import``) and a site's own TorchScript or ONNX file with a contract
(``ainode models add``, :mod:`.own`). :mod:`.source` opens a bundle and parses it with
MONAI's own ``ConfigParser``,
:mod:`.mapping` maps its inference config onto the node's model contract (or lists what cannot
be reproduced), :mod:`.codes` gives its labels their SEG/SR codes, :mod:`.export` builds the
network, loads its weights and writes the model directory."""

__all__ = ["codes", "export", "importer", "mapping", "own", "source"]
