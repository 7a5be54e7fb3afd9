"""Everything that is not serving: datasets, training and ONNX export, evaluation,
cross-validation, simulation, the demo (``demo``), the replay upstream, the RouterBench reader,
the what-if estimate (``estimate``) and the ``tierwise`` command line (``cli``).

It may import every other tierwise package; none of them imports it. It registers the
``replay`` judge under the ``tierwise.judges`` entry points (``replay_judge``).
"""
