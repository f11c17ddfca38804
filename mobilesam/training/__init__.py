"""Training: decoupled distillation (image sources → teacher-embedding cache → student
training → an official-format checkpoint) and fine-tuning on instance masks, two clients of
one trainer.

Modules: :mod:`.trainer` (the shared loop: DDP, AdamW with warm-up and cosine decay,
checkpoints and exact resume, logging), with :mod:`.resume` (exact resumption) and
:mod:`.distributed` (``torchrun``). Distillation: :mod:`.data` (image sources, subset and
split, augmentation views), :mod:`.cache` (the teacher's embeddings, sharded and
checksummed), :mod:`.train` (the student's trainer), :mod:`.teacher` (the teacher's prompt
encoder and mask decoder, the official-format export) and :mod:`.losses`. Fine-tuning:
:mod:`.instances` (COCO and mask-folder data), :mod:`.prompt_sim` (SAM's simulated prompts and
interactive loss) and :mod:`.finetune` (its trainer; embeddings cached by :mod:`.cache`).

It imports the library; the library (everything outside :mod:`mobilesam.cli`) never imports
it. Command-line entry points: ``mobilesam distill cache``, ``mobilesam distill train``
(:mod:`mobilesam.cli.distill`) and ``mobilesam finetune`` (:mod:`mobilesam.cli.finetune`).
"""
