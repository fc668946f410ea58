"""Evaluation: top-1 accuracy and agreement on labeled ImageFolders."""
