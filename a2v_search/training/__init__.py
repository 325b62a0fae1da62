"""Training and evaluation of the PaSta heads on HAKE annotations (``manage.py train`` / ``evaluate`` /
``check-data``), kept off the inference path: ingest and search never import this package.

- ``hake_data``: HAKE annotation formats -> samples with PaSta / verb targets.
- ``train``: cached features, head training, checkpoint writing.
- ``evaluate``: mAP of the heads on held-out samples.
- ``metrics``: average precision (11-point and all-point) per class and head.
- ``cli_train``: the Typer commands, registered on the main CLI.
"""
