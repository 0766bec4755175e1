"""Plan quality assurance (rtgrid pipeline stage 5).

Modules
-------
gamma
    3-D gamma analysis of two dose distributions.
policy
    The release policy as data: conversion attempts, gamma criteria, goal tolerances (versioned YAML).
plan_check
    Independent check of a device plan from its RTPLAN: dose recomputed, gamma, hard goals, deliverability.
plan_acceptance
    Whether a standard plan may be released (hot spot, hard goals).
release
    The release loop of a device plan: convert, check, regenerate (bounded), report the closest attempt.
"""

from rtgrid.engines.qa.gamma import GammaError, GammaResult, gamma_3d

__all__ = ["GammaError", "GammaResult", "gamma_3d"]
