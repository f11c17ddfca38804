"""Decoupled distillation: image sources → teacher-embedding cache → student training →
an official-format checkpoint.

It imports the library; the library never imports it. Entry points: ``mobilesam distill
cache`` and ``mobilesam distill train`` (see :mod:`mobilesam.cli.distill`).
"""
