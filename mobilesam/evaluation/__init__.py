"""Evaluation: the paper's fidelity protocol (mIoU of one model's masks against another's for
the same prompts). It imports the library; the library never imports it."""
