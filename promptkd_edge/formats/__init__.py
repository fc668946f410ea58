"""What the files a run or a bundle holds mean: torch-free descriptions that every layer reads (the models and
training side writes them, the runtime reads them)."""
