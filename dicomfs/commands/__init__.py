"""The bodies of the ``dicomfs`` subcommands that are more than a call (``cli`` parses and dispatches)."""
