"""The embedded demo: a generated domain, tiny CLIPs, both PromptKD stages, an evaluation. No downloads."""
