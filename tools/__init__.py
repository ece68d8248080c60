"""Developer tools that are not part of the installed package (the demo model's training recipe)."""
