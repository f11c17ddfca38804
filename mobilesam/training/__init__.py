"""Decoupled distillation: image sources → teacher-embedding cache → student training →
an official-format checkpoint.

Modules, in the order the data flows: :mod:`.data` (image sources, subset and split,
augmentation views), :mod:`.cache` (the teacher's embeddings, sharded and checksummed),
:mod:`.train` (the student's training loop), with :mod:`.teacher` (the teacher's prompt
encoder and mask decoder, and the student's export), :mod:`.losses`, :mod:`.resume` (exact
resumption) and :mod:`.distributed` (``torchrun``).

It imports the library; the library (everything outside :mod:`mobilesam.cli`) never imports
it. Command-line entry points: ``mobilesam distill cache`` and ``mobilesam distill train``
(:mod:`mobilesam.cli.distill`).
"""
