"""Plan optimization: the medical order, fluence map optimization, DVHs and plan metrics.

Modules
-------
order
    The medical order (prescription and dose-volume constraints) and its loader; the schema is
    documented in ``ORDER.md`` beside this file, with ``example_order.yaml`` (the TG-119 C-shape).
objectives
    The order turned into penalty terms on dose, and the bixel smoothness operator.
fluence
    Fluence map optimization on a dose influence matrix (scipy L-BFGS-B or torch).
dvh
    Cumulative DVHs, plan metrics and the goal check of an order.
coplanar_plan
    The chain dose grid -> beams -> dose influence (standard machine) -> optimized fluence.
"""
