"""Training and evaluation: the train loop, COCO evaluation, and their command-line jobs."""
