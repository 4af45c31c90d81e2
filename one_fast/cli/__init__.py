"""The command layer's shared pieces: the trainer's flags, generated from the config's schema."""
