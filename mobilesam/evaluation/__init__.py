"""Evaluation: the paper's fidelity protocol (mIoU of one model's masks against another's for
the same prompts, :mod:`.miou`) and box-prompted zero-shot instance segmentation on COCO-format
data (:mod:`.coco`). It imports the library; the library never imports it."""
